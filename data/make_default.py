"""Regenerate the embedded synthetic dataset in data/ml-synthetic (byte for byte).

The generator lives in the package (localfm/data/synthetic.py) so tests can check the
committed files against it; this script is the obvious entry point next to the data:

    python data/make_default.py            # same as: python -m localfm.data.synthetic
"""
from __future__ import annotations

import sys
from pathlib import Path

from localfm.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main(["--out", str(Path(__file__).resolve().parent / "ml-synthetic"), *sys.argv[1:]]))
