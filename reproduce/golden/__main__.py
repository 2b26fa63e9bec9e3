"""`python -m reproduce.golden PATH...`: the golden parity runner with the port's adapters."""
import sys

from reproduce.golden import main

sys.exit(main())
