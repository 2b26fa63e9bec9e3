"""`python -m reproduce.train`: the trainer's command line (reproduce.experiments.train_command).

The trainer itself, our_cnn_train.m, is reproduce.training.cnn_train (`train` is also importable
from here and from `reproduce`)."""
import sys

from reproduce.experiments.train_command import main
from reproduce.training.cnn_train import train

__all__ = ["main", "train"]

if __name__ == "__main__":
    sys.exit(main())
