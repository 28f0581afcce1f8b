"""Train a reward model on preference pairs (hh-rlhf or a file in its format): `python training/reward.py --help`."""
from rlhflab.cli import train_reward as main

if __name__ == "__main__":
    main()
