"""Train a reward model on preference pairs (hh-rlhf or a file in its format): `python training/reward.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhflab.config import RewardConfig, parse_config  # noqa: E402
from rlhflab.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None):
    cfg = parse_config(RewardConfig, argv, description=__doc__)
    from rlhflab.reward_training import train_reward_model

    return train_reward_model(cfg)


if __name__ == "__main__":
    main()
