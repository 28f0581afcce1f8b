"""Hugging Face Space entry point: builds the checkpoint-lab demo from space/ and launches it.

    python app.py                          # http://127.0.0.1:7860
    GRADIO_SERVER_NAME=0.0.0.0 python app.py   # listen on all interfaces (a Space sets this itself)

Checkpoints come from checkpoints/ (or RLHFLAB_CHECKPOINTS), else from the Hub repo ids in RLHFLAB_REWARD_REPO,
RLHFLAB_FULL_REPO, RLHFLAB_LORA_REPO and RLHFLAB_DCGAN_REPO; RLHFLAB_BASE_MODEL overrides the base policy.
RLHFLAB_PRELOAD=1 loads every model at start-up instead of on first use.
"""
from __future__ import annotations

import os
import threading

from space.demo import build_demo, launch_kwargs
from space.registry import Registry, env_flag


def launch_options(registry: Registry, env: dict | None = None) -> dict:
    """demo.launch() arguments: loopback only, unless GRADIO_SERVER_NAME names another address (a Space sets
    0.0.0.0). An empty GRADIO_SERVER_NAME also means loopback: passed on, it would listen on every interface."""
    env = os.environ if env is None else env
    return dict(server_name=(env.get("GRADIO_SERVER_NAME") or "").strip() or "127.0.0.1", share=False,
                **launch_kwargs(registry))


def main() -> None:
    registry = Registry()
    demo = build_demo(registry)
    if env_flag(os.environ, "RLHFLAB_PRELOAD", default=False):
        threading.Thread(target=registry.preload, daemon=True).start()
    demo.launch(**launch_options(registry))


if __name__ == "__main__":
    main()
