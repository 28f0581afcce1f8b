"""Who is voting or rating: a signed-in Hugging Face user on a Space (SPACE_ID set; the README's `hf_oauth: true`
makes the Space offer the sign-in), else the browser session. Both the Arena and the blind 1–5 ratings ask here."""
from __future__ import annotations

import os

import gradio as gr

from rlhflab.store.votes import voter_identity
from space.registry import Registry


def oauth_required(registry: Registry) -> bool:
    """On a Space (SPACE_ID set) only a signed-in Hugging Face user may vote or rate."""
    return bool((registry.env.get("SPACE_ID") or "").strip())


def login_button(registry: Registry) -> None:
    """gr.LoginButton where it can work. Outside a real Space Gradio mocks the sign-in with the machine's own HF
    login and refuses to start without one, so the button is only added on a Space; a handler without a signed-in
    profile refuses the action either way."""
    if oauth_required(registry) and os.environ.get("SPACE_ID"):
        gr.LoginButton()


def request_identity(registry: Registry, profile, request) -> tuple[str, str]:
    """(identity, kind 'hf' or 'session') of a request; a UserError sentence when a Space visitor is not signed in."""
    return voter_identity(profile, getattr(request, "session_hash", None), oauth_required(registry))
