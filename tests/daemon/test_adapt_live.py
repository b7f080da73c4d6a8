"""Zero-label recalibration in the live daemon (real LSL, real ZeroMQ).

The armband is shifted by one electrode against the model it was trained on; the
daemon heals it without labels, either on request (``recalibrate`` with
``labels: false``) or by itself (``[adapt] auto``) when its shift watch fires.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from daemon.conftest import (STEP_MS, WINDOW_MS, accuracy, armband, collect, daemon_config,
                             unique_id, wait_event, wait_for)

from emtl_stream.daemon import adapt
from emtl_stream.daemon.shift import ShiftReference
from emtl_stream.io.client import Client
from emtl_stream.pipeline.offline import featurize

HOLD_S = 0.6  # seconds per class in the armband's cycle


def _bundle_with_reference(source):
    """The source bundle carrying a shift reference from held-out unshifted windows.

    The reference must look like live data: a continuous stream cycling through the
    classes, transitions included (the training windows skip them and are in-sample,
    so a reference from them sits too high and an unshifted arm raises alarms).
    """
    bundle, _, _, _ = source
    m = bundle.components.n_features
    arm = armband()  # the same muscles and electrodes as the source model
    emg = np.vstack([arm.generate(int(HOLD_S * arm.fs), c)
                     for _ in range(4) for c in bundle.classes])
    X, _, _ = featurize(emg, arm.fs, bundle.make_extractor(), WINDOW_MS, STEP_MS)
    ref = ShiftReference.from_windows(bundle.components, np.eye(m), np.zeros(m), X)
    return dataclasses.replace(bundle, meta={**bundle.meta, "shift_reference": ref.to_dict()})


def _start(tmp_path, source, start_player, start_daemon, **env):
    bundle = _bundle_with_reference(source)
    sid = unique_id("adapt")
    config = daemon_config(tmp_path / "state", sid, **env)
    schedule = [(c, HOLD_S) for c in bundle.classes]
    player = start_player(sid, armband(), shift=1.0, class_schedule=schedule, loop=True)
    daemon = start_daemon(config, bundle=bundle)
    return daemon, player, Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)


def _preds(seen, model=None):
    return [m for t, m in seen if t == "pred" and (model is None or m["model"] == model)]


def test_auto_mode_heals_a_shifted_arm_without_any_request(tmp_path, source, start_player,
                                                           start_daemon, monkeypatch):
    from emtl_stream.daemon import jobs

    judged = []

    def recording_job(*args, **kw):  # the worker's job, with what the daemon passed
        judged.append(kw.get("live_rotation"))
        return unlabelled_job(*args, **kw)

    unlabelled_job = jobs.unlabelled_transfer_job
    monkeypatch.setattr(jobs, "unlabelled_transfer_job", recording_job)
    daemon, player, client = _start(tmp_path, source, start_player, start_daemon,
                                    EMTL_ADAPT_AUTO="true", EMTL_ADAPT_SECONDS="6")
    old = daemon.version
    seen = []
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_event(sub, "shift_suspected", 60.0, seen)  # ~3 s normally; slack for a loaded CI
            started = wait_event(sub, "calibration_started", 5.0, seen)
            assert started["purpose"] == "unlabelled" and started["labels"] is False
            swapped = wait_event(sub, ("model_swapped", "calibration_failed"), 60.0, seen)
            assert swapped["kind"] == "model_swapped", swapped
            assert swapped["reason"] == "unlabelled" and swapped["model"] != old
            collect(sub, 4.0, seen)
        before, n_before = accuracy(player, _preds(seen, old))
        after, n_after = accuracy(player, _preds(seen, swapped["model"]))
        assert n_before >= 20 and n_after >= 20, (n_before, n_after)
        assert before < 0.7 and after > 0.9, (before, after)
        seqs = [m["seq"] for m in _preds(seen)]
        assert np.all(np.diff(seqs) == 1), "predictions stopped or skipped during the fit"
        status = client.status()
        assert status["model"] == swapped["model"] and status["state"] == "streaming"
        _, _, meta = daemon.store.load_map(swapped["model"])
        assert meta["reason"] == "unlabelled" and meta["source_fingerprint"] == \
            daemon.live.fingerprint and "shift_reference" in meta
        # judged as a moved armband (its rotation from the identity map's 0), recorded
        # with the map and carried by the live model for the next fit's guard
        assert meta["moved_spacings"] >= adapt.ROTATED_SPACINGS, meta
        assert daemon.live.rotation == meta["map_rotation"] == meta["rotation"]
        assert judged == [0.0]  # the first fit was judged against the identity map
        # A second fit on the same placement is judged against the healed map's
        # rotation: a refit (0 spacings from it), never "rotated" again.
        with client.subscribe(("event",)) as sub:
            assert client.request("recalibrate", labels=False)["ok"] is True
            ev = wait_event(sub, ("calibration_done", "calibration_failed"), 60.0)
        assert judged == [0.0, meta["map_rotation"]]
        if ev["kind"] == "calibration_done":
            assert ev["moved_spacings"] < adapt.ROTATED_SPACINGS, ev
        else:
            assert "rotated" not in ev["reason"] and "a roll of" not in ev["reason"], ev
    finally:
        client.close()


def test_requested_zero_label_fit_and_a_refused_one(tmp_path, source, start_player,
                                                    start_daemon):
    # auto off; 0.5 s of windows is too few for a fit: refused, the old map stays live
    daemon, player, client = _start(tmp_path, source, start_player, start_daemon,
                                    EMTL_ADAPT_SECONDS="0.5")
    old = daemon.version
    H_old = daemon.live.H.copy()
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
            assert client.request("recalibrate", labels=False, repetitions=3)["ok"] is False
            reply = client.request("recalibrate", labels=False)
            assert reply["ok"] is True and reply["labels"] is False, reply
            ev = wait_event(sub, ("model_swapped", "calibration_failed"), 30.0)
            assert ev["kind"] == "calibration_failed" and "too few" in ev["reason"], ev
            wait_for(sub, lambda t, m: t == "pred", 5.0)
        assert daemon.version == old
        np.testing.assert_array_equal(daemon.live.H, H_old)
        assert client.status()["state"] == "streaming"
    finally:
        client.close()


def test_auto_mode_leaves_an_unshifted_arm_alone(tmp_path, source, start_player, start_daemon):
    bundle = _bundle_with_reference(source)
    sid = unique_id("adapt0")
    config = daemon_config(tmp_path / "state", sid, EMTL_ADAPT_AUTO="true",
                           EMTL_ADAPT_SECONDS="6")
    schedule = [(c, HOLD_S) for c in bundle.classes]
    player = start_player(sid, armband(), class_schedule=schedule, loop=True)
    daemon = start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
            seen = collect(sub, 8.0)  # 160 windows: 4x the watch's running window
        kinds = [m["kind"] for t, m in seen if t == "event"]
        assert "shift_suspected" not in kinds and "model_swapped" not in kinds, kinds
        acc, n = accuracy(player, _preds(seen))
        assert n >= 50 and acc > 0.9, (acc, n)
        assert daemon.version == 1
    finally:
        client.close()


def test_cli_recalibrate_no_labels_heals_the_shifted_arm(tmp_path, source, start_player,
                                                         start_daemon):
    """``emtl-stream recalibrate --no-labels``: no prompts, a new map, its summary printed."""
    import subprocess
    import sys

    daemon, player, client = _start(tmp_path, source, start_player, start_daemon,
                                    EMTL_ADAPT_SECONDS="6")
    old = daemon.version
    addr = ["--control", daemon.config.zmq.control, "--pub", daemon.config.zmq.pub]
    cmd = [sys.executable, "-m", "emtl_stream", "recalibrate"]
    try:
        with client.subscribe(("pred",)) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
        usage = subprocess.run(cmd + ["--no-labels", "--seconds", "1"] + addr,
                               capture_output=True, text=True, timeout=60)
        assert usage.returncode == 2 and "--no-labels takes no" in usage.stderr, usage.stderr
        proc = subprocess.run(cmd + ["--no-labels"] + addr, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "without labels" in proc.stderr and "new map live: version" in proc.stderr
        assert "Traceback" not in proc.stderr
        status = client.status()
        assert status["model"] != old and status["state"] == "streaming"
        _, _, meta = daemon.store.load_map(status["model"])
        assert meta["reason"] == "unlabelled"
    finally:
        client.close()
