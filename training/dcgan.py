"""Train the DCGAN on ChestMNIST (or, where allowed and chestmnist.npz is absent, the PHANTOM stand-in).

    python training/dcgan.py --profile demo             # a few CPU minutes; PHANTOM data unless chestmnist.npz is in --data-root
    python training/dcgan.py                            # the specification: ChestMNIST, batch 128, 1000 epochs
    python training/dcgan.py --resume --epochs 1200     # continue from <output-dir>/training_state

The checkpoint layout is described in rlhflab/dcgan_training.py; `python training/dcgan.py --help` lists every option.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as `python training/dcgan.py` from anywhere

from rlhflab.config import DCGANConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(DCGANConfig, argv, description=__doc__.splitlines()[0])
    from rlhflab.dcgan_training import train_dcgan  # after parsing: --help needs no torch

    return train_dcgan(cfg)


if __name__ == "__main__":
    main()
