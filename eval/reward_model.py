"""Evaluate a reward model on its held-out test pairs: `python eval/reward_model.py --help`."""
from rlhflab.cli import evaluate_reward_model as main

if __name__ == "__main__":
    main()
