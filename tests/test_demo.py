"""``emtl-stream demo`` end to end: real LSL, real ZeroMQ, the real daemon (about 15 s).

The armband plays at 3x real time on the sample clock the daemon also runs on.
"""

import pytest

from emtl_stream.demo import run_demo


@pytest.mark.slow
def test_demo_collapses_and_recovers(tmp_path):
    plot = tmp_path / "demo.png"
    r = run_demo(seconds_per_class=1.0, shift=1.0, seed=3, plot=str(plot), rate=3.0)
    # The synthetic armband is easy before the shift; a one-electrode rotation must
    # hurt, and a 5 s prompted burst must bring the accuracy back.
    assert r["before"] > 0.9
    assert r["shifted"] < 0.75
    assert r["recalibrated"] > 0.9
    assert r["roll"] is not None
    assert r["fit_s"] < 5.0
    assert len(r["trace"]) >= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # at 3x real time on the sample clock the daemon classified one window per 50 ms of
    # signal (train + 3 scored phases + recalibration: more than 30 s of signal); windows
    # it classified late are marked stale and left out of the scores
    assert r["windows"] > 30.0 / 0.05
    assert 0 <= r["stale"] <= r["windows"]
