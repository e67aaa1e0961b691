"""Locality probes benchmark; same as `lemoe bench locality ...`.

Example: python bench/locality.py --data ../shared/data/zsre/zsre_eval_dev.json --format zsre --edits 100 --subjects none
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.benchmarks.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("locality"))
