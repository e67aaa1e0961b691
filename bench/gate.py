"""Gate calibration; same as `lemoe bench gate ...`.

Example: python bench/gate.py --data ../shared/data/zsre/zsre_eval_dev.json --format zsre --edits 600
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.benchmarks.cli import add_bench_parser  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="bench/gate.py")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "gate", *sys.argv[1:]])
    sys.exit(args.handler(args))
