"""Shared fixtures: tiny synthetic data, the real shared Herlev cells, and the test device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_HERLEV = Path(os.environ.get("HERLEV_SHARED_DATA", REPO.parent / "shared" / "data" / "herlev"))


@pytest.fixture(scope="session")
def shared_herlev() -> Path:
    """The real Herlev cells in ../shared/data/herlev (README, letterbox200/, cells40/, features.csv)."""
    if not (SHARED_HERLEV / "letterbox200").is_dir():
        pytest.skip(f"real Herlev data not found at {SHARED_HERLEV} (set HERLEV_SHARED_DATA)")
    return SHARED_HERLEV


@pytest.fixture(scope="session")
def device() -> str:
    """Device for tests: HERLEV_TEST_DEVICE (default cpu), so the same suite runs on a GPU."""
    return os.environ.get("HERLEV_TEST_DEVICE", "cpu")
