"""Fixtures shared by the whole suite.

The real EMG recordings live in ``../shared/data/emg`` beside the repository (CI
has them too). Set ``EMTL_EMG_DATA`` to point elsewhere. Tests that need them fail
with a clear message when they are missing; they are never silently skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EMG_DATA = Path(os.environ.get("EMTL_EMG_DATA", REPO.parent / "shared" / "data" / "emg"))

# Background errors raise instead of being logged and contained (style habit 7).
os.environ.setdefault("EMTL_RAISE_BACKGROUND_ERRORS", "1")


@pytest.fixture(autouse=True)
def _propagate_package_log():
    """Let pytest's caplog see the package logger."""
    lg = logging.getLogger("emtl_stream")
    old = lg.propagate
    lg.propagate = True
    yield
    lg.propagate = old


@pytest.fixture
def ctx():
    """A private ZeroMQ context, destroyed (linger 0) after the test."""
    import zmq

    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def rng():
    """A seeded generator; tests that want several seeds parametrize their own."""
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def emg_dir() -> Path:
    """Folder of the shared CIIL electrode-shift recordings (fails if absent)."""
    if not any(EMG_DATA.glob("ciil_es_s*_baseline.npz")):
        pytest.fail(
            f"shared EMG recordings not found in {EMG_DATA}; check out ../shared beside the "
            "repository or set EMTL_EMG_DATA"
        )
    return EMG_DATA
