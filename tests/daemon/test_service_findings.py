"""Regression tests for daemon-side findings of a black-box probe (real LSL, real ZeroMQ).

Hostile recalibrate/train numbers, ``label: null`` while idle, state events and
``status.state`` for every state, the prompt rate, stale windows after a stalled
source, a persisted map of another source model, and cancelling a running fit.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pylsl
from daemon.conftest import (FS, N_CHANNELS, armband, collect, daemon_config, make_source,
                             unique_id, wait_event, wait_for, wait_joined)

from emtl_stream.daemon import calibrate
from emtl_stream.daemon.service import Daemon
from emtl_stream.daemon.state import State
from emtl_stream.io.client import Client
from emtl_stream.io.lsl_inlet import local_clock
from emtl_stream.io.store import StateStore

HOSTILE = [
    {"repetitions": 10 ** 27},
    {"repetitions": 10 ** 6},
    {"seconds_per_class": 1e300},
    {"seconds_per_class": 1e308, "repetitions": 10},
    {"seconds_per_class": 3600.0},
]


def test_hostile_numbers_are_refused_and_start_nothing(live):
    with live.client.subscribe(("event",)) as sub:
        for fields in HOSTILE:
            for cmd in ("recalibrate", "train"):
                t0 = time.monotonic()
                reply = live.client.request(cmd, **fields)
                assert reply["ok"] is False, (cmd, fields, reply)
                assert time.monotonic() - t0 < 2.0  # nothing waited in proportion to it
                status = live.client.status()
                assert status["ok"] and status["state"] == "streaming", status
        seen = collect(sub, 0.5)
    assert not [m for _, m in seen if m["kind"] in ("calibration_started", "state")], seen


def test_label_null_while_idle_stays_idle(live):
    reply = live.client.request("label", label=None)
    assert reply["ok"] is True and reply["state"] == "streaming"
    assert live.client.status()["state"] == "streaming"
    assert live.client.recalibrate()["ok"] is True  # not blocked by a phantom session
    live.client.request("cancel")


def test_every_state_is_announced_and_prompts_are_rate_limited(live):
    with live.client.subscribe(("event", "prompt", "pred")) as sub:
        wait_joined(sub)
        assert live.client.recalibrate()["ok"] is True
        assert live.client.status()["state"] == "prompting"  # lead-in: nothing recorded yet
        seen = []
        done = wait_event(sub, ("calibration_done", "calibration_failed"), 30.0, seen)
        collect(sub, 0.3, seen)
    assert done["kind"] == "calibration_done", done
    states = [m["state"] for t, m in seen if t == "event" and m["kind"] == "state"]
    assert states[:2] == ["prompting", "recording"] and states[-2:] == ["fitting", "streaming"]
    assert set(states) == {"prompting", "recording", "fitting", "streaming"}, states
    prompts = [m for t, m in seen if t == "prompt"]
    span = max(m["t_pub"] for m in prompts) - min(m["t_pub"] for m in prompts) \
        if "t_pub" in prompts[0] else None
    duration = live.daemon.config.calibration
    n_steps = prompts[0]["of"]
    total = n_steps * (duration.seconds_per_class + duration.lead_in_s + duration.rest_s)
    # at most ~10 per second plus one per new step (the old loop sent ~800 per second)
    assert len(prompts) <= 10 * total + 2 * n_steps, (len(prompts), span)
    assert len({m["step"] for m in prompts}) == n_steps


def test_stale_windows_are_marked(tmp_path, source, start_daemon):
    """Samples stamped seconds in the past (a stalled source catching up) come out stale."""
    sid = unique_id("stale")
    config = daemon_config(tmp_path / "state", sid)
    info = pylsl.StreamInfo("emtl-test", "EMG", N_CHANNELS, FS, "float32", sid)
    outlet = pylsl.StreamOutlet(info)
    start_daemon(config, bundle=source[0])
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    arm = armband()
    try:
        with client.subscribe(("pred",)) as sub:
            deadline = time.monotonic() + 20
            while not client.status()["stream"]["connected"] and time.monotonic() < deadline:
                time.sleep(0.1)
            n = int(FS)
            old = local_clock() - 3.0  # one second of signal, 3 s old
            outlet.push_chunk(arm.generate(n, "rest").astype(np.float32).tolist(),
                              list(old + np.arange(n) / FS))
            stale = wait_for(sub, lambda t, m: t == "pred", 10.0)
            assert stale["stale"] is True, stale
            # live samples again: fresh predictions
            fresh = None
            # Live samples on a continuous sample clock (a slow loop pushes bigger
            # chunks, never a timestamp gap, which would restart the windowing).
            base, sent = local_clock(), 0
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                due = int((local_clock() - base) * FS) - sent
                if due > 0:
                    outlet.push_chunk(arm.generate(due, "rest").astype(np.float32).tolist(),
                                      list(base + (sent + np.arange(due)) / FS))
                    sent += due
                for topic, m in collect(sub, 0.02):
                    if not m["stale"]:
                        fresh = m
                if fresh is not None:
                    break
            assert fresh is not None and local_clock() - fresh["t"] < 1.0
        status = client.status()
        assert status["stale_windows"] >= 1
        # the 2 s jump is an outage, not 1000 dropped samples
        assert status["dropped"] < 10, status
    finally:
        client.close()


def test_map_of_another_source_model_is_refused_on_start(tmp_path, source, start_player,
                                                         start_daemon):
    bundle_a = source[0]
    bundle_b = make_source(seed=SEED_B)[0]
    state = tmp_path / "state"
    store = StateStore(state)
    store.save_source(bundle_a)
    from emtl_stream.daemon.live import source_fingerprint
    m = bundle_a.components.n_features
    v = store.save_map(np.eye(m) * 1.5, np.zeros(m),
                       {"source_fingerprint": source_fingerprint(bundle_a.components)})
    store.set_live(v)
    store.save_source(bundle_b)  # the state dir's model is replaced behind the map's back
    sid = unique_id("fp")
    config = daemon_config(state, sid)
    d = Daemon(config)  # no bundle: resume from the state dir
    assert d.version != v and "fitted for source model" in d.last_error
    np.testing.assert_array_equal(d.live.H, np.eye(m))
    # and the same map is resumed for the model it was fitted for
    store.save_source(bundle_a)
    store.set_live(v)
    d2 = Daemon(config)
    assert d2.version == v
    np.testing.assert_array_equal(d2.live.H, np.eye(m) * 1.5)


SEED_B = 11


def test_cancel_stops_waiting_for_a_running_fit(tmp_path, source):
    config = daemon_config(tmp_path / "state", unique_id("cancel"))
    d = Daemon(config, bundle=source[0])
    release = threading.Event()

    def slow_fit(cancel):  # a fit that ignores its cancel flag for a while
        release.wait(10.0)
        return {}

    d.fsm.transition("start_prompting")
    d.fsm.transition("start_fitting")
    d.worker.submit("transfer", None, "recalibrate", slow_fit)
    first = d.fit
    assert calibrate.cancel(d) is True and first.cancel.is_set()
    assert d.fsm.state == State.STREAMING and d.fit is None
    d.fsm.transition("start_prompting")
    d.fsm.transition("start_fitting")
    d.worker.submit("transfer", None, "recalibrate", lambda cancel: {"quick": True})
    t0 = time.monotonic()
    assert d.fit.future.result(timeout=2.0) == {"quick": True}  # not queued behind slow_fit
    assert time.monotonic() - t0 < 2.0
    release.set()
    d._close()
