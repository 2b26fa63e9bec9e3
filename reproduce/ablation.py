"""`python -m reproduce.ablation`: the command keeps its name; the code lives in reproduce.experiments.ablation."""
import sys

from reproduce.experiments.ablation import main

if __name__ == "__main__":
    sys.exit(main())
