"""`python -m reproduce.paper`: the command keeps its name; the code lives in reproduce.experiments.paper."""
import sys

from reproduce.experiments.paper import main

if __name__ == "__main__":
    sys.exit(main())
