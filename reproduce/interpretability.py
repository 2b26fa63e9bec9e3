"""`python -m reproduce.interpretability`: the command keeps its name; the code lives in reproduce.evaluation.part_interpretability."""
import sys

from reproduce.evaluation.part_interpretability import main

if __name__ == "__main__":
    sys.exit(main())
