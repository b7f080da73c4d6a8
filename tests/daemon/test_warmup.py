"""Warm-up must work at every stream width the daemon supports, and be cheap."""

import pytest

from emtl_stream.daemon.warmup import warm_up


@pytest.mark.parametrize("n_channels,fs", [(8, 200.0), (64, 2000.0)])
def test_warm_up_runs_every_stage_at_any_width(n_channels, fs):
    # 64 channels once crashed: the warm-up solved the real 16384-unknown system densely.
    times = warm_up(n_channels, fs, transfer_kwargs={"structure": "channel", "reg": 0.1})
    for stage in ("features", "classify_shared", "classify_full", "transfer_shared_dense",
                  "transfer_shared_cg", "transfer_full_dense", "transfer_full_cg"):
        assert stage in times
    assert times["total"] == pytest.approx(sum(v for k, v in times.items() if k != "total"),
                                           rel=0.5)
