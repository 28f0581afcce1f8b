"""Train the DCGAN on ChestMNIST (or, where allowed and chestmnist.npz is absent, the PHANTOM stand-in)."""
from rlhflab.cli import train_dcgan as main

if __name__ == "__main__":
    main()
