"""The daemon under failure: hostile control requests, NaN input, a stream of the wrong
shape, a lost and restored stream, a cancelled calibration and degenerate bursts.

Every case runs against the real daemon on real loopback LSL and ZeroMQ, and ends by
checking that the daemon still serves (predictions arrive, ``status`` answers).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from daemon.conftest import (FS, accuracy, armband, collect, daemon_config, unique_id,
                             wait_event, wait_for, wait_joined, wait_joined_idle)

from emtl_stream.io.client import Client
from emtl_stream.io.lsl_inlet import local_clock
from emtl_stream.io.recordings import Recording


def _raw_request(address: str, frame: bytes, timeout_s: float = 5.0) -> dict:
    """Send one raw frame on a fresh REQ socket; the parsed reply (fails on no reply)."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(address)
        sock.send(frame)
        assert sock.poll(int(timeout_s * 1000), zmq.POLLIN), f"no reply to {frame[:40]!r}"
        return json.loads(sock.recv())
    finally:
        sock.close(linger=0)


def _assert_serving(live, after_seq: int = 0) -> None:
    status = live.client.status()
    assert status["ok"] is True and status["state"] == "streaming", status
    with live.client.subscribe(("pred",)) as sub:
        msg = wait_for(sub, lambda topic, m: topic == "pred" and m["seq"] > after_seq, 5.0)
    assert msg["model"] == status["model"]


# --------------------------------------------------------------------------- 6
BAD_FRAMES = [
    (b"\xff\xfe", "not UTF-8"),
    (b"status", "not valid JSON"),
    (b"x" * 70_000, "exceeds the limit of 65536 bytes"),
    (b"[1]", "must be a JSON object"),
    (b'{"cmd": "status"}', "no protocol version"),
    (b'{"v": 2, "cmd": "status"}', "unsupported protocol version"),
    (b'{"v": 1, "cmd": "fly"}', "unknown command 'fly'"),
    (b'{"v": 1, "cmd": "status", "verbose": true}', "unknown field"),
    (b'{"v": 1, "cmd": "rollback", "version": "x"}', "rollback.version must be an integer"),
    (b'{"v": 1, "cmd": "rollback", "version": true}', "integer"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": "1"}', "seconds_per_class"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": NaN}', "JSON"),
    (b'{"v": 1, "cmd": "recalibrate", "classes": []}', "classes"),
    (b'{"v": 1, "cmd": "label"}', "label"),
    (b'{"v": 1, "cmd": "label", "label": 5}', "label"),
    (b'{"v": 1, "cmd": "status", "v": 1}', "duplicate"),
]


def test_control_refuses_bad_requests_and_keeps_serving(live):
    with live.client.subscribe(("pred",)) as sub:
        seq0 = wait_for(sub, lambda topic, m: topic == "pred", 5.0)["seq"]
    for frame, reason in BAD_FRAMES:
        reply = _raw_request(live.control, frame)
        assert reply["v"] == 1 and reply["ok"] is False, (frame[:60], reply)
        assert reason in reply["error"], (frame[:60], reply["error"])
    # well-formed requests the daemon must refuse on their meaning
    c = live.client
    r = c.recalibrate(classes=["rest", "juggle"])
    assert r["ok"] is False and "juggle" in r["error"], r
    r = c.fit()
    assert r["ok"] is False and "label" in r["error"], r
    r = c.label("juggle")
    assert r["ok"] is False and "juggle" in r["error"], r
    r = c.fit(min_windows=5)  # still nothing labelled
    assert r["ok"] is False, r
    r = c.request("cancel")
    assert r["ok"] is True and r["cancelled"] is False, r
    assert c.status()["model"] == 1
    _assert_serving(live, seq0)


# --------------------------------------------------------------------------- 8
def _nan_recording(seconds: float, nan_from: float, nan_to: float, cls: str = "open"):
    arm = armband()
    emg = arm.generate(int(seconds * FS), cls)
    emg[int(nan_from * FS):int(nan_to * FS), 3] = np.nan
    names = list(arm.class_names)
    labels = np.full(len(emg), names.index(cls), dtype=np.int64)
    return Recording(emg=emg, fs=FS, labels=labels, class_names=names)


def test_nan_samples_raise_bad_input_and_predictions_continue(tmp_path, source, start_player,
                                                              start_daemon):
    sid = unique_id("nan")
    config = daemon_config(tmp_path / "state", sid)
    start_daemon(config, bundle=source[0])
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    with client.subscribe(("pred", "event")) as sub:
        # 1 s clean, 1 s with NaN on one electrode, then clean again (looped)
        player = start_player(sid, _nan_recording(4.0, 1.0, 2.0), loop=True)
        seen = []
        wait_joined(sub, 10.0, seen)  # a prediction of the clean second: subscribed in time
        ev = wait_event(sub, "bad_input", 10.0, seen)
        assert "NaN" in ev["reason"] and ev["skipped_total"] >= 1, ev
        t_bad = ev["t_pub"]
        # predictions resume after the NaN block, and they are right
        later = [m for topic, m in collect(sub, 1.8, seen) if topic == "pred"]
    preds = [m for topic, m in seen if topic == "pred"]
    assert preds[-1]["seq"] - preds[0]["seq"] == len(preds) - 1  # skipped windows are not gaps
    resumed = [p for p in later if p["t"] > t_bad + 0.5]
    assert len(resumed) >= 10
    acc, n = accuracy(player, resumed)
    assert n >= 10 and acc > 0.9, acc
    status = client.status()
    assert status["dropped"] >= ev["skipped_total"] and status["stream"]["connected"] is True
    client.close()


def test_wrong_channel_count_is_refused(tmp_path, source, start_player, start_daemon):
    sid = unique_id("six")
    config = daemon_config(tmp_path / "state", sid)
    start_daemon(config, bundle=source[0])  # the model has 8 channels
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    with client.subscribe(("pred", "event")) as sub:
        wait_joined_idle(client, sub, source[0].classes[0])
        start_player(sid, armband(n_channels=6))
        seen = []
        ev = wait_event(sub, "stream_refused", 15.0, seen)
        assert "6 channels" in ev["reason"] and "8" in ev["reason"], ev
        # retried every REFUSED_RETRY_S (5 s), announced once
        collect(sub, 6.0, seen)
    assert not [m for topic, m in seen if topic == "pred"]
    refused = [m for topic, m in seen if topic == "event" and m["kind"] == "stream_refused"]
    assert len(refused) == 1, refused
    status = client.status()
    assert status["stream"]["connected"] is False
    assert "6 channels" in status["last_error"]
    assert status["windows"] == 0
    client.close()


def test_wrong_stream_appearing_while_ours_is_gone_is_announced(live, start_player):
    """Our stream is lost, a 6-channel one with its source_id appears: one
    ``stream_refused`` event and ``status.stream.reason`` say why it is not used."""
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        live.player.stop()
        seen = []
        wait_event(sub, "stream_lost", 10.0, seen)
        assert "lost" in live.client.status()["stream"]["reason"]
        start_player(live.source_id, armband(n_channels=6))
        ev = wait_event(sub, "stream_refused", 20.0, seen)
        assert "6 channels" in ev["reason"], ev
        collect(sub, 6.0, seen)  # the inlet keeps retrying: announced once
    refused = [m for t, m in seen if t == "event" and m["kind"] == "stream_refused"]
    assert len(refused) == 1, refused
    status = live.client.status()
    assert status["stream"]["connected"] is False
    assert "6 channels" in status["stream"]["reason"] and "6 channels" in status["last_error"]


# --------------------------------------------------------------------------- 9
def test_stream_lost_and_restored(live, start_player):
    with live.client.subscribe(("pred", "event")) as sub:
        last = wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        live.player.stop()
        seen = []
        lost = wait_event(sub, "stream_lost", 10.0, seen)
        assert lost["reason"]
        status = live.client.status()
        assert status["stream"]["connected"] is False
        # same source_id, a new outlet: the daemon finds it again
        player2 = start_player(live.source_id)
        t_restart = local_clock()
        wait_event(sub, "stream_restored", 20.0, seen)
        preds = [m for topic, m in collect(sub, 1.5) if topic == "pred"]
    assert preds and all(p["t"] > t_restart - 0.05 for p in preds)
    assert preds[0]["seq"] > last["seq"]
    assert live.client.status()["stream"]["connected"] is True
    acc, n = accuracy(player2, preds)
    assert n >= 10 and acc > 0.9, acc


# --------------------------------------------------------------------------- 10
def test_cancel_during_calibration_keeps_the_old_map(live):
    with live.client.subscribe(("pred", "prompt", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        reply = live.client.recalibrate(seconds_per_class=0.6)
        assert reply["ok"] is True
        wait_for(sub, lambda topic, m: topic == "prompt", 5.0)
        assert live.client.status()["state"] in ("prompting", "recording")
        busy = live.client.recalibrate()
        assert busy["ok"] is False and "in progress" in busy["error"], busy
        reply = live.client.cancel()
        assert reply["ok"] is True and reply["cancelled"] is True, reply
        seen = []
        ev = wait_event(sub, ("calibration_failed", "calibration_done"), 5.0, seen)
        assert ev["kind"] == "calibration_failed" and "cancel" in ev["reason"], ev
        assert ev["model"] == 1
        # no more prompts after the cancel, and predictions keep using map 1
        later = collect(sub, 1.0)
        assert not [m for topic, m in later if topic == "prompt"]
        preds = [m for topic, m in later if topic == "pred"]
        assert preds and {p["model"] for p in preds} == {1}
    status = live.client.status()
    assert status["state"] == "streaming" and status["model"] == 1 and status["maps"] == [1]
    # the daemon accepts a new calibration after a cancel
    assert live.client.recalibrate(classes=["rest"])["ok"] is True
    assert live.client.cancel()["cancelled"] is True


# --------------------------------------------------------------------------- 11
def test_too_few_manual_windows_fail_and_the_old_map_stays(live):
    with live.client.subscribe(("event", "pred")) as sub:
        wait_joined(sub)
        assert live.client.label("rest")["ok"] is True
        reply = live.client.fit()  # at most a window or two labelled
        ev = wait_event(sub, ("calibration_failed", "calibration_done"), 5.0)
    assert ev["kind"] == "calibration_failed" and "window" in ev["reason"], ev
    assert ev["model"] == 1
    # the fit failed, so the reply must say so (protocol: a failing command -> ok false)
    assert reply["ok"] is False and "window" in reply["error"], reply
    status = live.client.status()
    assert status["model"] == 1 and status["state"] == "streaming"
    _assert_serving(live)


def test_dead_electrodes_burst_fails_and_the_old_map_stays(tmp_path, source, start_player,
                                                          start_daemon):
    sid = unique_id("flat")
    config = daemon_config(tmp_path / "state", sid)
    start_daemon(config, bundle=source[0])
    flat = Recording(emg=np.zeros((int(2 * FS), 8), np.float32), fs=FS)
    start_player(sid, flat, loop=True)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    with client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 20.0)
        reply = client.recalibrate(classes=["rest", "open"], seconds_per_class=0.6)
        assert reply["ok"] is True, reply
        ev = wait_event(sub, ("calibration_failed", "calibration_done"),
                        reply["duration_s"] + 10.0)
        assert ev["kind"] == "calibration_failed", ev
        assert "constant" in ev["reason"] and ev["model"] == 1, ev
        wait_for(sub, lambda topic, m: topic == "pred" and m["model"] == 1, 5.0)
    status = client.status()
    assert status["model"] == 1 and status["maps"] == [1] and status["state"] == "streaming"
    client.close()


@pytest.mark.parametrize("n_bytes", [65_536 - 40, 65_537])
def test_request_size_limit_is_exact(live, n_bytes):
    # pad a valid status request to n_bytes: at the limit it is parsed, above it refused
    head = b'{"v": 1, "cmd": "status", "pad": "'
    frame = head + b"x" * (n_bytes - len(head) - 2) + b'"}'
    assert len(frame) == n_bytes
    reply = _raw_request(live.control, frame)
    assert reply["ok"] is False
    if n_bytes > 65_536:
        assert "exceeds the limit" in reply["error"]
    else:
        assert "unknown field" in reply["error"]  # read and parsed, then refused on meaning


def test_a_map_that_cannot_be_saved_fails_the_calibration(live, monkeypatch):
    # The map is written before it goes live; a full disk fails the calibration and
    # the old map keeps serving, so what serves is what a restart would load.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live.daemon.store, "save_map", full_disk)
    with live.client.subscribe(("pred", "event")) as sub:
        assert live.client.recalibrate(seconds_per_class=0.6)["ok"] is True
        seen = []
        ev = wait_event(sub, ("calibration_failed", "calibration_done"), 30.0, seen)
        assert ev["kind"] == "calibration_failed" and "could not save map 2" in ev["reason"], ev
        assert not [m for topic, m in seen if topic == "event" and m["kind"] == "model_swapped"]
        preds = [m for topic, m in collect(sub, 0.5) if topic == "pred"]
        assert preds and {p["model"] for p in preds} == {1}
    status = live.client.status()
    assert status["state"] == "streaming" and status["model"] == 1 and status["maps"] == [1]


def test_a_burst_that_cannot_be_saved_fails_the_calibration(live, monkeypatch):
    # A burst that is not on disk is never fitted.
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(live.daemon.store, "save_burst", full_disk)
    with live.client.subscribe(("event",)) as sub:
        assert live.client.recalibrate(seconds_per_class=0.6)["ok"] is True
        seen = []
        ev = wait_event(sub, ("calibration_failed", "calibration_done"), 30.0, seen)
        assert ev["kind"] == "calibration_failed" and "could not save burst" in ev["reason"], ev
        assert not [m for _, m in seen if m["kind"] == "model_swapped"]
    status = live.client.status()
    assert status["state"] == "streaming" and status["model"] == 1 and status["maps"] == [1]
