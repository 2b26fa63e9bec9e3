"""`python -m reproduce.bench`: the benchmark suite (`reproduce.bench.suite`)."""
import sys

from reproduce.bench.suite import main

sys.exit(main())
