"""GRPO (or RLOO) fine-tuning of a policy against a frozen reward model: `python training/grpo.py --mode full|lora --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import GRPOConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(GRPOConfig, argv, description=__doc__)
    from rlhflab.grpo import train_grpo

    return train_grpo(cfg)


if __name__ == "__main__":
    main()
