"""SFT of a policy on the chosen responses of preference pairs: `python training/sft.py --mode full|lora --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import SFTConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(SFTConfig, argv, description=__doc__)
    from rlhflab.sft import train_sft

    return train_sft(cfg)


if __name__ == "__main__":
    main()
