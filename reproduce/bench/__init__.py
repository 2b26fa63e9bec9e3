"""Benchmarks: speed figures of the port, kept apart from the method's modules.

    python -m reproduce.bench                  the suite: every benchmark, one table, one JSON file (`suite`)
    python -m reproduce.bench.conv_mask        conv_mask forward+backward / nn.Conv2d (`conv_mask`)
    python -m reproduce.bench.evaluation       location stability and the occlusion pass (`evaluation`)
    python -m reproduce.bench.imdb             building the fox imdb (`imdb`)

Each module has `run() -> dict` (the numbers) and `main(argv)` (its command line). No test
asserts a time; the benchmarks print ratios and per-item figures.
"""
