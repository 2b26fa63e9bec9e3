"""`python -m reproduce.bench_conv_mask`: the name issue 15 gives the conv_mask benchmark; the
benchmark itself is reproduce.bench.conv_mask (same options, e.g. `--profile`)."""
from reproduce.bench.conv_mask import main

if __name__ == "__main__":
    raise SystemExit(main())
