"""SFT of a policy on the chosen responses of preference pairs: `python training/sft.py --mode full|lora --help`."""
from rlhflab.cli import train_sft as main

if __name__ == "__main__":
    main()
