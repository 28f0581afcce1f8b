"""Dataset loaders: hh-rlhf preference pairs, oasst1 prompts, ChestMNIST images (real sources and embedded stand-ins)."""
