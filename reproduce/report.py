"""`python -m reproduce.report`: the command keeps its name; the code lives in reproduce.experiments.report."""
import sys

from reproduce.experiments.report import main

if __name__ == "__main__":
    sys.exit(main())
