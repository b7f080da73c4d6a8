"""Proportional speed on the live ``pred`` stream and in models the daemon trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from daemon.conftest import (FS, N_CHANNELS, STEP_MS, WINDOW_MS, armband, collect,
                             daemon_config, unique_id, wait_for)
from lsl_helpers import ClockedOutlet

from emtl_stream.config import load_config
from emtl_stream.daemon import jobs
from emtl_stream.daemon.bundle import filter_spec
from emtl_stream.daemon.shift import ShiftReference
from emtl_stream.io.client import Client
from emtl_stream.model.speed import SpeedCalibration, calibrate_bundle_speed, speed_kwargs


def test_pred_carries_the_speed_of_the_mapped_features(tmp_path, source, start_player,
                                                       start_daemon):
    bundle, _, X, y = source
    cal = calibrate_bundle_speed(bundle, X, y)
    bundle = dataclasses.replace(bundle, meta={**bundle.meta, "speed": cal})
    sid = unique_id("speed")
    config = daemon_config(tmp_path / "state", sid)
    hold = 1.5
    schedule = [(c, hold) for c in bundle.classes]
    start_player(sid, armband(), class_schedule=schedule, loop=True)
    start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred",)) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
            # one pass of the looped schedule holds every class
            msgs = [m for t, m in collect(sub, hold * len(schedule) + 0.5) if t == "pred"]
    finally:
        client.close()
    assert len(msgs) > 50
    speeds = np.array([m["speed"] for m in msgs])
    assert np.all(np.isfinite(speeds)) and speeds.min() >= 0.0 and speeds.max() <= 1.0
    rest = [m["speed"] for m in msgs if m["label"] == "rest"]
    moving = [m["speed"] for m in msgs if m["label"] != "rest" and not m["rejected"]]
    assert rest and max(rest) == 0.0  # rest is always still
    assert moving and np.median(moving) > 0.1  # a held contraction moves the hand


def test_train_job_bundle_carries_reference_speed_and_filter(source):
    bundle, _, X, y = source
    spec = filter_spec([20.0, 200.0], 50.0)
    out = jobs.train_job(X, y, kind="lgmm", covariance_type="tied", n_components_per_class=1,
                         extractor=bundle.make_extractor(), window_ms=WINDOW_MS,
                         step_ms=STEP_MS, n_channels=bundle.n_channels, rate=bundle.fs,
                         filter_spec=spec, speed_kwargs=speed_kwargs(load_config(None, env={})))
    trained = out["bundle"]
    assert trained.filter == spec
    ref = ShiftReference.from_dict(trained.meta["shift_reference"])
    assert np.isfinite(ref.to_dict()["ll_median"])
    cal = SpeedCalibration.from_dict(trained.meta["speed"])
    assert cal.to_dict() == SpeedCalibration.from_dict(
        calibrate_bundle_speed(trained, X, y)).to_dict()


# ---------------------------------------------------------------- bad input on a real outlet
def _wire_is_finite(seen):
    from emtl_stream.io import protocol

    for topic, m in seen:  # re-encode strictly: NaN/inf would raise
        protocol.loads(protocol.dumps(m))
        if topic == "pred":
            assert np.isfinite(m["speed"]) and 0.0 <= m["speed"] <= 1.0, m


def test_silent_electrode_and_nonfinite_samples_give_speed_0_and_bad_input(
        tmp_path, source, start_daemon):
    bundle, _, X, y = source
    bundle = dataclasses.replace(bundle, meta={**bundle.meta,
                                               "speed": calibrate_bundle_speed(bundle, X, y)})
    sid = unique_id("badspeed")
    config = daemon_config(tmp_path / "state", sid)
    out = ClockedOutlet(sid, N_CHANNELS, FS)
    start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    arm = armband()
    try:
        with client.subscribe(("pred", "event")) as sub:
            seen = []
            for _ in range(40):  # until the daemon predicts on our stream
                seen += out.stream(arm, "close", 0.5, sub)
                if any(t == "pred" and m["label"] == "close" and m["speed"] > 0
                       for t, m in seen):
                    break
            assert any(t == "pred" and m["speed"] > 0 for t, m in seen), "no moving speed"

            def silence(block):
                block[:, 3] = 0.0  # a disconnected electrode

            silent = out.stream(arm, "close", 1.5, sub, silence)
            preds = [m for t, m in silent if t == "pred"]
            late = [m for m in preds if m["t"] > preds[0]["t"] + 0.4]  # window fully silent
            assert late and all(m["speed"] == 0.0 for m in late), late
            reasons = [m["reason"] for t, m in silent if t == "event"
                       and m["kind"] == "bad_input"]
            assert "speed: silent_channel" in reasons, reasons

            for bad in (np.nan, np.inf, -np.inf):
                def spoil(block, bad=bad):
                    block[::7, 2] = bad  # scattered non-finite samples on one electrode

                t_bad = out.base + out.sent / out.fs  # stamp of the first spoilt sample
                got = out.stream(arm, "close", 1.3, sub, spoil)
                events = [m for t, m in got if t == "event" and m["kind"] == "bad_input"]
                assert any("NaN/inf" in m["reason"] for m in events), (bad, events)
                _wire_is_finite(got)
                preds = [m for t, m in got if t == "pred"]
                # every window holding a spoilt sample is skipped, not published
                assert all(m["t"] < t_bad + 0.02 for m in preds), (t_bad, preds)
            back = out.stream(arm, "close", 1.5, sub)
            assert any(t == "pred" and m["speed"] > 0 for t, m in back)  # recovers
            _wire_is_finite(seen + silent + back)
    finally:
        client.close()



# ---------------------------------------------------------------- prompted ramp session
def test_prompted_ramp_session_recalibrates_speed_better_than_static_holds(tmp_path):
    """A synthetic user holds graded levels, ramps when prompted, holds them again."""
    from emtl_stream.daemon.bundle import SourceBundle
    from emtl_stream.eval_speed_live import run_seed
    from emtl_stream.io.store import StateStore

    levels = (0.1, 0.4, 0.7, 1.0)
    r = run_seed(5, classes=["open", "close"], levels=levels, hold_s=0.8, ramp_seconds=2.0,
                 state_dir=tmp_path)
    done = r["calibration_done"]
    assert done["purpose"] == "ramp" and done["model"] == 1  # the map is kept
    assert done["ramped"] == ["open", "close"]
    # holds at full strength leave speed at 0 below it; ramps make it proportional
    assert r["ramp"]["mae"] < r["hold"]["mae"] - 0.08, (r["hold"], r["ramp"])
    assert r["ramp"]["spearman"] > 0.8, r["ramp"]

    # stored in the state folder's source model (a restart serves it); the map is untouched
    store = StateStore(tmp_path / "state")
    stored = SourceBundle.load(store.source_path())
    assert stored.meta["speed"] == r["speed_ramp"]
    assert [m["version"] for m in store.list_maps()] == [1]
    # independent: the burst's windows (H = I) -> summed MAV -> per-class percentiles
    arrays, _ = store.load_burst(1)
    names = stored.make_extractor().feature_names
    cols = [names.index(f"ch{c}_mav") for c in range(stored.n_channels)]
    a = arrays["X"][:, cols].sum(axis=1)
    classes = stored.meta["speed"]["classes"]
    for c in ("open", "close"):
        lo, hi = np.percentile(a[arrays["labels"] == c], [10, 70])
        k = classes.index(c)
        assert stored.meta["speed"]["low"][k] == pytest.approx(lo)
        assert stored.meta["speed"]["high"][k] == pytest.approx(hi)
    for c in ("flex", "ext"):  # not ramped: the hold calibration stays
        k = classes.index(c)
        assert stored.meta["speed"]["low"][k] == r["speed_hold"]["low"][k]
