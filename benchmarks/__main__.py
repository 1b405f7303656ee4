"""``python -m benchmarks ...``: the same as ``annotator bench ...`` (see :mod:`benchmarks.bench_cli`)."""

import sys

from benchmarks.bench_cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m benchmarks"))
