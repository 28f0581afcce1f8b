"""Compare every policy (and best-of-n) with the base on held-out prompts, scored by the training reward model"""
from rlhflab.cli import evaluate as main

if __name__ == "__main__":
    main()
