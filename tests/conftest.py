"""Shared test set-up: where the corpora are (never committed; CI points CHARLM_DATA_DIR at ../shared/data)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHARLM_DATA_DIR", str(REPO.parent / "shared" / "data"))
