"""GRPO (or RLOO) fine-tuning of a policy against a frozen reward model: `python training/grpo.py --mode full|lora --help`."""
from rlhflab.cli import train_grpo as main

if __name__ == "__main__":
    main()
