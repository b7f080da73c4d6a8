"""Proportional speed on the live ``pred`` stream and in models the daemon trains."""

from __future__ import annotations

import dataclasses

import numpy as np
from daemon.conftest import (STEP_MS, WINDOW_MS, armband, collect, daemon_config, unique_id,
                             wait_for)

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
            msgs = [m for t, m in collect(sub, 2 * hold * len(schedule)) if t == "pred"]
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
