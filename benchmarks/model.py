"""Run `numpymnv2 bench --suite model` (see numpymnv2/bench.py and benchmarks/README.md); extra arguments pass through.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/model.py [--rounds 3] [--reps 5] [--quick]
"""
import argparse
import sys

from numpymnv2 import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python benchmarks/model.py")
    bench.configure_parser(parser)
    sys.exit(bench.run(parser.parse_args(["--suite", "model"] + sys.argv[1:])))
