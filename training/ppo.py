"""PPO fine-tuning of a policy against a frozen reward model: `python training/ppo.py --mode full|lora --help`."""
from rlhflab.cli import train_ppo as main

if __name__ == "__main__":
    main()
