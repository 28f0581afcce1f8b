"""Train/eval mode switches that restore what they found: sampling, probes and measurements run a model in eval
mode (no dropout) in the middle of training, and training must continue in the mode it was in."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def evaluating(model, on: bool = True):
    """`model` in eval mode inside the block (when `on`), its previous training flag restored after."""
    was_training = model.training
    if on:
        model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
