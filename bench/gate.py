"""Gate calibration (routing separation); same as `lemoe bench gate ...`.

Example: python bench/gate.py --data ../shared/data/zsre/zsre_eval_dev.json --format zsre --edits 600
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.benchmarks.cli import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("gate"))
