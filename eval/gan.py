"""Diagnostics for a DCGAN generator checkpoint on the data it was trained on: python eval/gan.py [--checkpoint ...]

Diversity (mean pairwise L2, MS-SSIM), memorisation (nearest-training-image distances vs held-out images)
and a Fréchet distance in a small classifier's features (not Inception FID) — the same function the
training script runs at its end. Writes diagnostics.json and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as `python eval/gan.py` from anywhere

from rlhflab.checkpoints import write_json
from rlhflab.config import CHECKPOINTS_DIR
from rlhflab.data.chestmnist import XrayDataset, dataset_from_description
from rlhflab.errors import UserError, cli_main
from rlhflab.gan import DIAGNOSTICS_FILE, diagnostics_table, gan_diagnostics, load_generator


def evaluate_checkpoint(checkpoint: str, data_root: str | None = None, num_samples: int = 1000,
                        seed: int = 42) -> tuple[dict, Path]:
    """Diagnostics of a generator checkpoint (folder or Hub id) against the data its config.json records."""
    generator = load_generator(checkpoint)
    description = generator.config.get("data")
    if not description:
        raise UserError(f"checkpoint {checkpoint} does not record its training data (config.json 'data'); "
                        f"re-train it with training/dcgan.py.")
    data: XrayDataset = dataset_from_description(description, root=data_root)
    print(f"generator {generator.checkpoint_path}; data {data.source} ({len(data.train_images):,} training images)",
          flush=True)
    recorded, rebuilt = description.get("train_fingerprint"), data.description.get("train_fingerprint")
    if recorded and recorded != rebuilt:
        print(f"warning: these training images differ from the ones the generator saw (fingerprint {rebuilt}, "
              f"recorded {recorded}): the data file or the phantom code changed; the memorisation numbers "
              f"refer to the images loaded now.", file=sys.stderr, flush=True)
    return gan_diagnostics(generator, data, num_samples=num_samples, seed=seed), generator.checkpoint_path


@cli_main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=str(CHECKPOINTS_DIR / "dcgan"), help="generator folder or Hub repo id")
    parser.add_argument("--data-root", default=None,
                        help="folder holding chestmnist.npz (default: the one recorded in the checkpoint)")
    parser.add_argument("--num-samples", type=int, default=1000, help="generated and held-out images compared")
    parser.add_argument("--seed", type=int, default=42, help="sampling and classifier seed")
    parser.add_argument("--output", default=None,
                        help=f"JSON written (default: {DIAGNOSTICS_FILE} in a local checkpoint folder, "
                             f"else {CHECKPOINTS_DIR / 'eval' / 'dcgan_diagnostics.json'})")
    args = parser.parse_args(argv)
    diagnostics, folder = evaluate_checkpoint(args.checkpoint, args.data_root, args.num_samples, args.seed)
    if args.output:
        output = Path(args.output)
    elif Path(args.checkpoint).is_dir():
        output = folder / DIAGNOSTICS_FILE
    else:  # a Hub id resolves into the HF cache, which is not ours to write
        output = CHECKPOINTS_DIR / "eval" / "dcgan_diagnostics.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, diagnostics)
    print(diagnostics_table(diagnostics))
    print(f"\n{diagnostics['frechet']['note']}\nwrote {output}")
    return diagnostics


if __name__ == "__main__":
    main()
