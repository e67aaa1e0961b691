"""Concurrent submit + generate + train over loopback HTTP; same as `lemoe bench load ...`.

Example: python bench/load.py --seconds 60 --submitters 2 --generators 2 --database postgresql
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.benchmarks.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("load"))
