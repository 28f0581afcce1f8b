"""Diagnostics for a DCGAN generator checkpoint on the data it was trained on: python eval/gan.py [--checkpoint ...]"""
from rlhflab.cli import evaluate_gan as main

if __name__ == "__main__":
    main()
