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
