"""Build every checkpoint that is missing — reward model, judge, SFT, PPO full and LoRA, DPO, GRPO, DCGAN, evaluation —"""
from rlhflab.cli import pipeline as main

if __name__ == "__main__":
    main()
