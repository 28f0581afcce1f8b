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
from space.registry import Registry


def main() -> None:
    registry = Registry()
    demo = build_demo(registry)
    if os.environ.get("RLHFLAB_PRELOAD", "").lower() in ("1", "true", "yes"):
        threading.Thread(target=registry.preload, daemon=True).start()
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), **launch_kwargs(registry))


if __name__ == "__main__":
    main()
