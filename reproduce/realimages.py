"""`python -m reproduce.realimages`: the command keeps its name; the code lives in reproduce.experiments.realimages."""
import sys

from reproduce.experiments.realimages import main

if __name__ == "__main__":
    sys.exit(main())
