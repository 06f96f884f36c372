"""Run `numpymnv2 bench --suite extra` (see numpymnv2/bench.py and benchmarks/README.md); extra arguments pass through.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/extra.py [--rounds 3] [--reps 5] [--quick]
"""
import argparse
import sys

from numpymnv2 import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python benchmarks/extra.py")
    bench.configure_parser(parser)
    sys.exit(bench.run(parser.parse_args(["--suite", "extra"] + sys.argv[1:])))
