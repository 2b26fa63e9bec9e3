"""`python -m reproduce.pretrain`: the command keeps its name; the code lives in reproduce.experiments.pretrain."""
import sys

from reproduce.experiments.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
