"""Diagnostics for a DCGAN generator checkpoint on the data it was trained on: python eval/gan.py [--checkpoint ...]

Diversity (mean pairwise L2, MS-SSIM), memorisation (nearest-training-image distances vs held-out images)
and a Fréchet distance in a small classifier's features (not Inception FID) — the same function the
training script runs at its end. Writes diagnostics.json and prints a table.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as `python eval/gan.py` from anywhere

from rlhflab.config import GANEvalConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(GANEvalConfig, argv, description=__doc__.splitlines()[0])
    from rlhflab.gan import evaluate_generator  # after parsing: --help needs no torch

    return evaluate_generator(cfg)


if __name__ == "__main__":
    main()
