"""About tab: every checkpoint, where it resolves to, whether and from where it was loaded, and its model card."""
from __future__ import annotations

import re

import gradio as gr

from space.registry import KINDS, Registry

_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)

INTRO = """An RLHF + GAN checkpoint lab. `training/` produces four checkpoints — a reward model, a full-parameter
PPO policy, a LoRA PPO policy and a DCGAN chest X-ray generator — plus `eval/` results; this app shows them.
Each checkpoint is looked up in the local store first (`{store}`), then as a Hub repo id from its environment
variable; a missing one only disables what needs it."""


def status_line(registry: Registry, key: str) -> str:
    res = registry.resolve(key)
    kind = KINDS[key]
    if not res.available:
        return f"**missing** — {registry.missing_message(res)}"
    text = f"resolves to {res.detail}"
    if key in registry.loaded_from:
        text += f"; **loaded** from {registry.loaded_from[key]}"
    elif key in registry.load_errors:
        text += f"; **failed to load**: {registry.load_errors[key]}"
    else:
        text += "; not loaded yet (loads on first use)"
    if key != "base" and kind.env_var and res.origin == "local" and registry.env.get(kind.env_var):
        text += f" (the local folder wins over {kind.env_var})"
    return text


def card_body(card: str | None) -> str:
    if not card:
        return "*No model card.*"
    body = _FRONT_MATTER.sub("", card, count=1).strip()
    # Two levels down (# -> ###): each card sits under this page's "##" heading for its checkpoint.
    return re.sub(r"^(#{1,4}) ", r"##\1 ", body, flags=re.M)


def about_markdown(registry: Registry) -> str:
    parts = [INTRO.format(store=registry.checkpoints_dir), "", "| checkpoint | status |", "|---|---|"]
    parts += [f"| {KINDS[k].title} | {status_line(registry, k).replace('|', '/')} |" for k in KINDS]
    for key in KINDS:
        if key == "eval":
            continue
        parts += ["", f"## {KINDS[key].title}", "", card_body(registry.card(key))]
    return "\n".join(parts)


def build_about_tab(registry: Registry, demo: gr.Blocks) -> None:
    """The About tab (refreshed on page load and on demand: "loaded from" fills in as models load)."""
    with gr.Tab("About", id="about") as tab:
        refresh = gr.Button("Refresh", size="sm")
        text = gr.Markdown(elem_id="about-text")

    def about():
        """Each checkpoint: where it resolves to, where it was loaded from, and its model card."""
        return about_markdown(registry)

    gr.on([demo.load, refresh.click, tab.select], about, None, [text], api_name="about")
