"""Regression tests for findings of a black-box probe of the daemon (real LSL, real ZeroMQ).

The outage in progress counted in ``status.outage_s``; a rollback to the live map is a
no-op; refusal texts that say what is going on and what to do; refused requests logged
quietly with a periodic summary; absurd finite samples treated like non-finite ones.
"""

from __future__ import annotations

import time

from daemon.conftest import wait_event, wait_for


def test_status_outage_includes_the_outage_in_progress(live):
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        assert live.client.status()["outage_s"] == 0.0
        live.player.stop()
        wait_event(sub, "stream_lost", 10.0)
        t0 = time.monotonic()
        first = live.client.status()
        time.sleep(0.5)  # the quantity under test is elapsed time itself
        second = live.client.status()
        waited = time.monotonic() - t0
    assert first["stream"]["connected"] is False and second["stream"]["connected"] is False
    assert first["outages"] == 1
    # it grows while the stream stays gone, by the time that passed between the requests
    assert 0.0 <= first["outage_s"] < second["outage_s"]
    assert abs((second["outage_s"] - first["outage_s"]) - 0.5) < waited - 0.5 + 0.05


def test_rollback_to_the_live_map_is_a_no_op_with_a_clear_reply(live):
    from daemon.conftest import collect

    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)  # subscribed: events would arrive
        before = live.client.status()["model"]
        reply = live.client.rollback(before)
        # a request after it: its reply proves the loop is past the rollback handler
        assert live.client.status()["model"] == before
        seen = collect(sub, 1.0)
    assert reply["ok"] is True and reply["changed"] is False, reply
    assert reply["model"] == reply["previous"] == before
    assert "already live" in reply["note"]
    assert not [m for t, m in seen if t == "event"
                and m["kind"] in ("rollback", "model_swapped")], seen


def test_label_and_fit_refusals_say_what_is_running_and_what_to_do(live):
    c = live.client
    assert c.recalibrate(labels=False)["ok"] is True
    for reply in (c.label("open"), c.fit()):
        assert reply["ok"] is False
        assert "zero-label recalibration is collecting" in reply["error"], reply
        assert "needs no labels" in reply["error"] and "cancel" in reply["error"], reply
        assert "prompted" not in reply["error"] and "label windows first" not in reply["error"]
    assert c.request("cancel")["cancelled"] is True
    assert c.recalibrate(seconds_per_class=5.0)["ok"] is True
    for reply in (c.label("open"), c.fit()):
        assert reply["ok"] is False
        assert "prompted recalibration is running" in reply["error"], reply
        assert "its prompts label the windows" in reply["error"] and "cancel" in reply["error"]
        assert "label windows first" not in reply["error"]
    assert c.request("cancel")["cancelled"] is True
    idle = c.fit()  # nothing running at all: the old advice is the right one
    assert idle["ok"] is False and "label windows first" in idle["error"]


def test_samples_beyond_the_physical_bound_are_bad_input_not_confident_rest(
        tmp_path, source, start_daemon):
    """1e30 on every channel: skipped like NaN, with a bad_input event naming the bound."""
    from daemon.conftest import FS, N_CHANNELS, armband, daemon_config
    from lsl_helpers import ClockedOutlet, unique_id

    from emtl_stream.io.client import Client

    sid = unique_id("absurd")
    config = daemon_config(tmp_path / "state", sid)
    assert config.stream.max_abs_sample == 1e9  # the documented default
    out = ClockedOutlet(sid, N_CHANNELS, FS)
    start_daemon(config, bundle=source[0])
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    arm = armband()
    try:
        with client.subscribe(("pred", "event")) as sub:
            for _ in range(40):  # until the daemon predicts on our stream
                if any(t == "pred" for t, _ in out.stream(arm, "rest", 0.5, sub)):
                    break
            else:
                raise AssertionError("no prediction on the hand-made stream")

            def absurd(block):
                block[:] = 1e30  # finite, but no amplifier delivers this

            t_bad = out.base + out.sent / out.fs
            got = out.stream(arm, "rest", 1.5, sub, absurd)
            back = out.stream(arm, "rest", 1.5, sub)
        status = client.status()
    finally:
        client.close()
    preds = [m for t, m in got if t == "pred"]
    assert all(m["t"] < t_bad + 0.02 for m in preds), preds  # no confident rest from 1e30
    events = [m for t, m in got if t == "event" and m["kind"] == "bad_input"]
    assert events, got[-5:]
    assert "beyond ±1e+09 ([stream] max_abs_sample)" in events[0]["reason"], events[0]
    assert events[0]["out_of_range_total"] > 0 and events[0]["max_abs_sample"] == 1e9
    assert any(t == "pred" and m["t"] > t_bad + 1.5 for t, m in back)  # recovers after it
    assert status["dropped"] >= 20  # the skipped windows are counted


def test_a_ramp_calibration_that_cannot_be_stored_keeps_the_old_one(tmp_path, source):
    """A real write failure (the source folder is a file): the old calibration stays live."""
    import dataclasses

    from daemon.conftest import daemon_config, unique_id

    from emtl_stream.daemon import calibrate
    from emtl_stream.daemon.service import Daemon
    from emtl_stream.model.speed import calibrate_bundle_speed

    bundle, _, X, y = source
    old = calibrate_bundle_speed(bundle, X, y)
    d = Daemon(daemon_config(tmp_path / "state", unique_id("store")),
               bundle=dataclasses.replace(bundle, meta={**bundle.meta, "speed": old}))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    d.store.source_dir = blocker / "source"  # every write below it fails (ENOTDIR)
    new = dict(old, low=[v + 1.0 for v in old["low"]], high=[v + 2.0 for v in old["high"]])
    calibrate.install_speed(d, {"speed": new, "counts": {"open": 3}, "fit_s": 0.0}, burst_id=1)
    assert d.live.bundle.meta["speed"] == old
    assert d.speed.calibration.to_dict() == old
    assert "could not be stored" in d.last_error
