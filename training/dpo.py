"""DPO of a policy on preference pairs: `python training/dpo.py --mode full|lora --help`."""
from rlhflab.cli import train_dpo as main

if __name__ == "__main__":
    main()
