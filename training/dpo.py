"""DPO of a policy on preference pairs: `python training/dpo.py --mode full|lora --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import DPOConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(DPOConfig, argv, description=__doc__)
    from rlhflab.dpo import train_dpo

    return train_dpo(cfg)


if __name__ == "__main__":
    main()
