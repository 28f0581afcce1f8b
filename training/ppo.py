"""PPO fine-tuning of a policy against a frozen reward model: `python training/ppo.py --mode full|lora --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import PPOConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(PPOConfig, argv, description=__doc__)
    from rlhflab.ppo import train_ppo

    return train_ppo(cfg)


if __name__ == "__main__":
    main()
