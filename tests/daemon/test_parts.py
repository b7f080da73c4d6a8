"""The daemon's plain parts, without sockets: events, connect back-off, status, worker, maps."""

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from emtl_stream.daemon import connection, events, jobs, status
from emtl_stream.daemon.maps import map_meta, pick_reference, resume_map
from emtl_stream.daemon.shift import ShiftReference
from emtl_stream.daemon.worker import FitWorker
from emtl_stream.io.store import StateStore


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- events
def test_events_queue_until_flush_then_publish_in_order_with_t_pub():
    sent = []
    clock = FakeClock(7.5)
    ev = events.Events(clock)
    ev.emit("bad_input")  # nothing bound: dropped, as before the publisher exists
    ev.queue("map_refused", reason="r", model=3)
    assert not ev.bound and sent == []
    ev.bind(lambda topic, msg: sent.append((topic, msg)))
    ev.emit("state", state="idle")
    ev.queue("stream_lost", reason="x")  # behind the queue, not ahead of it
    ev.flush()
    kinds = [m["kind"] for _, m in sent]
    assert kinds == ["state", "map_refused", "stream_lost"]
    assert {t for t, _ in sent} == {"event"}
    assert sent[1][1]["reason"] == "r" and sent[1][1]["model"] == 3
    assert all(m["t_pub"] == 7.5 for _, m in sent)
    json.dumps([m for _, m in sent])  # plain JSON values
    ev.unbind()
    ev.emit("bad_input")
    assert len(sent) == 3


def test_bad_input_events_are_rate_limited_and_count_every_skipped_window():
    sent = []
    mono = FakeClock(0.0)
    ev = events.Events(FakeClock(), monotonic=mono)
    ev.bind(lambda topic, msg: sent.append(msg))
    totals = [2, 5, 9, 9, 30, 31]  # pipeline totals seen at these times
    times = [0.0, 0.3, 0.9, 1.05, 1.2, 2.5]
    for t, total in zip(times, totals):
        mono.t = t
        ev.nonfinite_skipped(total)
    # independent count: an event when more than BAD_INPUT_EVENT_S passed since the last
    expected, last, counted = [], -np.inf, 0
    for t, total in zip(times, totals):
        if t - last > events.BAD_INPUT_EVENT_S:
            expected.append((total - counted, total))
            last, counted = t, total
    got = [(int(m["reason"].split()[0]), m["skipped_total"]) for m in sent]
    assert got == expected == [(2, 2), (7, 9), (22, 31)]
    ev.reset_nonfinite()
    mono.t = 10.0
    ev.nonfinite_skipped(4)
    assert sent[-1]["skipped_total"] == 4 and sent[-1]["reason"].startswith("4 ")
    # a speed problem has its own limit
    ev.bad_speed("silent channel")
    ev.bad_speed("silent channel")
    assert [m["reason"] for m in sent].count("speed: silent channel") == 1


# ---------------------------------------------------------------- connection
def test_connect_backoff_doubles_to_its_cap_and_resets_on_connect():
    lo, hi = connection.CONNECT_BACKOFF_S
    c = connection.ConnectPolicy()
    now, delays = 0.0, []
    for _ in range(8):
        assert c.may_try(now)
        before = now
        c.not_found(now)
        # the next attempt is due exactly after the back-off in force
        nxt = before + 1e-9
        while not c.may_try(nxt):
            nxt += 0.01
        delays.append(round(nxt - before, 2))
        now = nxt
    assert delays == [min(lo * 2 ** i, hi) for i in range(8)]
    c.connected()
    assert c.backoff_s == lo


def test_refusals_are_new_once_and_the_reason_follows_what_happened():
    c = connection.ConnectPolicy()
    assert c.reason() == connection.NOT_FOUND_YET
    assert c.refused("8 channels, model expects 4", 0.0) is True
    assert c.refused("8 channels, model expects 4", 5.0) is False  # said once
    assert not c.may_try(5.0 + connection.REFUSED_RETRY_S - 0.01)
    assert c.may_try(5.0 + connection.REFUSED_RETRY_S)
    assert c.reason() == "8 channels, model expects 4"
    c.connected()
    c.lost("lost: no samples for 1 s; reconnecting")
    assert c.reason().startswith("lost:")
    assert c.refused_seen("runs at 100 Hz") is True and c.reason() == "runs at 100 Hz"
    c.connected()
    assert c.reason() == connection.NOT_FOUND_YET


# ---------------------------------------------------------------- status
def test_status_is_built_from_plain_values():
    desc = SimpleNamespace(name="emg", n_channels=8, rate=200.0)
    inlet = SimpleNamespace(n_lost_samples=3, total_outage_s=1.5, n_outages=2)  # ongoing included
    pipeline = SimpleNamespace(n_skipped_nonfinite=4)
    maps = [{"version": v, "reason": f"r{v}", "extra": 1} for v in range(1, 26)]
    session = SimpleNamespace(purpose="recalibrate", t0=10.0, duration_s=6.0, n_windows=40)
    out = status.build_status(state="recording", version=25, classes=("a", "b"),
                              stream_name="cfg-name", desc=desc, connected=False,
                              reason="lost: x", windows=100, stale_windows=7, inlet=inlet,
                              pipeline=pipeline, uptime_s=12.0, maps=maps, last_error="e",
                              session=session, now=12.5)
    assert out["stream"] == {"name": "emg", "channels": 8, "rate": 200.0, "connected": False,
                             "reason": "lost: x"}
    assert out["dropped"] == 7 and out["outages"] == 2 and out["outage_s"] == 1.5
    assert out["maps"] == list(range(1, 26))
    hist = out["map_history"]
    assert [h["version"] for h in hist] == list(range(26 - status.MAP_HISTORY_LEN, 26))
    assert set(hist[0]) == set(status.MAP_HISTORY_KEYS) and hist[0]["reason"] == "r6"
    assert out["calibration"] == {"purpose": "recalibrate", "elapsed_s": 2.5,
                                  "duration_s": 6.0, "windows": 40}
    assert out["classes"] == ["a", "b"]
    json.dumps(out)
    idle = status.build_status(state="idle", version=None, classes=[], stream_name="cfg-name",
                               desc=None, connected=True, reason="unused", windows=0,
                               stale_windows=0, inlet=None, pipeline=None, uptime_s=0.0,
                               maps=[], last_error="",
                               session=SimpleNamespace(purpose="manual"), now=0.0)
    assert idle["stream"] == {"name": "cfg-name", "channels": None, "rate": None,
                              "connected": True}
    assert idle["dropped"] == 0 and "calibration" not in idle


# ---------------------------------------------------------------- worker
def test_worker_returns_results_errors_and_drops_cancelled_fits():
    w = FitWorker()
    assert w.collect() is None and w.cancel() is False
    fit = w.submit("transfer", 4, "recalibrate", lambda a, cancel, kind: (a, kind), 1,
                   kind="own keyword")  # a job's own ``kind`` does not collide
    fit.future.result(timeout=5)
    got_fit, result = w.collect()
    assert got_fit is fit and result == (1, "own keyword") and w.fit is None

    def boom(cancel):
        raise ValueError("bad burst")

    w.submit("transfer", None, "recalibrate", boom).future.exception(timeout=5)
    with pytest.raises(ValueError, match="bad burst"):
        w.collect()

    def cancelled(cancel):
        raise jobs.FitCancelled("cancelled by request")

    w.submit("train", None, "train", cancelled).future.exception(timeout=5)
    assert w.collect() is None and w.fit is None
    w.shutdown()


def test_cancelling_a_running_fit_frees_the_worker_for_the_next_one():
    w = FitWorker()
    release = threading.Event()
    seen = {}

    def slow(cancel):
        seen["cancel"] = cancel
        release.wait(10.0)
        return "slow"

    first = w.submit("transfer", None, "recalibrate", slow)
    while "cancel" not in seen:
        time.sleep(0.001)
    assert w.cancel() is True and first.cancel.is_set() and w.fit is None
    nxt = w.submit("transfer", None, "recalibrate", lambda cancel: "quick")
    assert nxt.future.result(timeout=5) == "quick"  # not queued behind the slow one
    release.set()
    w.shutdown()


# ---------------------------------------------------------------- maps
def test_resume_map_only_for_the_same_source_model(tmp_path):
    store = StateStore(tmp_path / "state")
    m = 3
    fresh = resume_map(store, m, "fp-a", fresh=False)
    assert fresh.version is None and not fresh.refusal
    np.testing.assert_array_equal(fresh.H, np.eye(m))
    H = np.arange(9.0).reshape(3, 3)
    v = store.save_map(H, np.ones(m), map_meta("fp-a", None, reason="test"))
    store.set_live(v)
    same = resume_map(store, m, "fp-a", fresh=False)
    assert same.version == v and not same.refusal
    np.testing.assert_array_equal(same.H, H)
    assert same.meta["source_fingerprint"] == "fp-a" and same.meta["reason"] == "test"
    other = resume_map(store, m, "fp-b", fresh=False)
    assert other.version is None and "fitted for source model fp-a" in other.refusal
    wrong = resume_map(store, 4, "fp-a", fresh=False)
    assert wrong.version is None and "shape" in wrong.refusal
    assert resume_map(store, m, "fp-a", fresh=True).version is None


def test_shift_reference_is_stored_and_the_first_loadable_one_is_picked():
    ref = ShiftReference(-5.0, 1.0, None, None, 100, "train")
    meta = map_meta("fp", ref, reason="x")
    assert meta["source_fingerprint"] == "fp" and meta["reason"] == "x"
    back = pick_reference(None, {"broken": True}, meta["shift_reference"])
    assert back is not None and back.ll_median == -5.0 and back.source == "train"
    assert pick_reference(None, None) is None
    assert "shift_reference" not in map_meta("fp", None)


# ---------------------------------------------------------------- BLAS threads
_BLAS_PROBE = """
import json, sys
import numpy as np
import threadpoolctl
from emtl_stream.daemon.blas import limit_blas_threads
before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
n = limit_blas_threads(1)
after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([n, before, after]))
"""


@pytest.mark.parametrize("user_env", [False, True])
def test_serving_process_runs_blas_on_one_thread_unless_the_user_chose(user_env):
    import os
    import subprocess
    import sys

    # threadpoolctl (installed with scikit-learn, a dev dependency) is the independent view
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if user_env:
        env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", _BLAS_PROBE], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    n, before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before, "numpy loaded no OpenBLAS"  # threadpoolctl's own view of the library
    if user_env:
        assert n == 0 and after == before
    else:
        assert n == len(before) and after == [1] * len(before)
