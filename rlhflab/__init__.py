"""rlhflab: the shared library of the RLHF checkpoint lab (data, models, generation, scoring, PPO, checkpoints)."""
