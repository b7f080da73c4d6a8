"""The daemon end to end on real loopback LSL and ZeroMQ: predictions, recalibration,
rollback, restart, persistence and manual calibration.

Each test runs its own daemon and synthetic armband (``live`` fixture); ground truth
is the replayer's record of the performed class per timestamp. Thresholds:

* unshifted accuracy > 0.9: the source model was trained on the same (seeded)
  armband, so only noise differs (measured 1.0);
* after a 1-electrode rotation < 0.7: the class patterns move to the neighbouring
  electrodes (measured about 0.45; 0.7 leaves room for noise and still proves a drop);
* after recalibration > 0.85: a 0.6 s-per-class burst (about 9 windows per class,
  32 features) is enough for the ring-constrained transfer EM to find the roll
  (measured 1.0); 0.85 allows for windows near class changes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from daemon.conftest import STEADY_S, accuracy, collect, score, wait_event, wait_for

from emtl_stream.daemon.bundle import SourceBundle
from emtl_stream.io.client import Client
from emtl_stream.io.lsl_inlet import local_clock
from emtl_stream.pipeline.features import FeatureExtractor

PRED_FIELDS = {"v", "seq", "t", "t_pub", "label", "index", "proba", "confidence", "rejected",
               "model"}
FEAT_FIELDS = {"v", "seq", "t", "x", "model"}


def _preds(msgs):
    return [m for topic, m in msgs if topic == "pred"]


def _events(msgs, kind=None):
    return [m for topic, m in msgs if topic == "event" and (kind is None or m["kind"] == kind)]


def _assert_contiguous(preds):
    seqs = [p["seq"] for p in preds]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or reorder in pred seq"


def _recalibrate(live, sub, seen, **kw) -> dict:
    reply = live.client.recalibrate(**kw)
    assert reply["ok"] is True and reply["state"] == "calibrating", reply
    done = wait_event(sub, ("calibration_done", "calibration_failed"),
                      reply["duration_s"] + 20.0, seen)
    assert done["kind"] == "calibration_done", done
    return done


# --------------------------------------------------------------------------- 1
def test_predictions_flow_with_protocol_fields_and_are_right(live, source):
    _, model, _, _ = source
    status = live.client.status()
    assert status["ok"] and status["state"] == "streaming" and status["model"] == 1
    assert status["classes"] == live.classes
    assert status["stream"] == {"name": "emtl-test", "channels": 8, "rate": 500.0,
                                "connected": True}
    with live.client.subscribe(("pred", "feat")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)  # joined
        msgs = []
        for cls in ["open", "close", "rest", "flex", "ext"]:
            live.player.set_class(cls)
            collect(sub, 0.5, msgs)
    preds = _preds(msgs)
    feats = {m["seq"]: m for topic, m in msgs if topic == "feat"}
    assert len(preds) >= 30
    _assert_contiguous(preds)
    ts = np.array([p["t"] for p in preds])
    assert np.all(np.diff(ts) > 0)
    # consecutive windows end one hop (25 samples) apart on the sample clock
    np.testing.assert_allclose(np.diff(ts), 0.05, atol=1e-3)
    for p in preds:
        assert PRED_FIELDS <= set(p), set(p) ^ PRED_FIELDS
        assert p["v"] == 1 and p["model"] == 1
        assert p["t_pub"] >= p["t"]  # published after its last sample existed
        assert isinstance(p["index"], int) and p["label"] == live.classes[p["index"]]
        assert len(p["proba"]) == len(live.classes)
        assert sum(p["proba"]) == pytest.approx(1.0, abs=1e-9)
        assert p["confidence"] == max(p["proba"])
        assert p["rejected"] is False  # reject_below defaults to 0
    # feat: x of the source dimension, and with H = I (map 1) it is the raw feature
    # vector, so the source model itself must give the published posterior
    assert set(feats) >= {p["seq"] for p in preds[:-1]}
    for p in preds[:-1]:
        f = feats[p["seq"]]
        assert FEAT_FIELDS <= set(f) and f["t"] == p["t"] and f["model"] == 1
        assert len(f["x"]) == 32
        np.testing.assert_allclose(model.predict_proba(np.array([f["x"]]))[0], p["proba"],
                                   rtol=1e-9, atol=1e-12)
    acc, n = accuracy(live.player, preds)
    assert n >= 15
    assert acc > 0.9, acc


# --------------------------------------------------------------------------- 2
def test_shift_then_prompted_recalibration_recovers(live):
    sub = live.client.subscribe(("pred", "prompt", "event"))
    with sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        live.player.set_shift(1.0)
        shifted, n = score(live.player, sub, live.classes)
        assert n >= 20 and shifted < 0.7, shifted
        seen = []
        t_cal = local_clock()
        done = _recalibrate(live, sub, seen, seconds_per_class=0.6)
        wait_for(sub, lambda topic, m: topic == "pred" and m["model"] == 2, 5.0, seen)
        after, n = score(live.player, sub, live.classes)
    # prompts: 5 classes with a rest between each, in the model's class order
    prompts = [m for topic, m in seen if topic == "prompt"]
    steps = {}
    for p in prompts:
        assert {"v", "class", "remaining_s", "step", "of"} <= set(p)
        assert p["of"] == 9 and 1 <= p["step"] <= 9 and p["remaining_s"] >= 0
        steps.setdefault(p["step"], p["class"])
    assert sorted(steps) == list(range(1, 10))
    expected = []
    for c in live.classes:
        expected += (["rest"] if expected else []) + [c]
    assert [steps[i] for i in range(1, 10)] == expected
    # the armband followed every prompt
    performed = {c for _, c in live.player.labels_between(t_cal, t_cal + 60.0)}
    assert set(live.classes) <= performed
    kinds = [m["kind"] for m in _events(seen)]
    assert kinds.index("calibration_started") < kinds.index("model_swapped") \
        < kinds.index("calibration_done")
    swapped = _events(seen, "model_swapped")[0]
    assert swapped["model"] == 2 == done["model"]
    # predictions kept flowing through the fit and the swap: no seq gap, old then new map
    preds = _preds(seen)
    _assert_contiguous(preds)
    models = [p["model"] for p in preds]
    assert models[0] == 1 and models[-1] == 2
    assert models == sorted(models)
    assert live.client.status()["model"] == 2
    assert after > 0.85, after


# --------------------------------------------------------------------------- 3
def test_rollback_to_the_first_map_and_to_an_unknown_one(live):
    live.player.set_shift(1.0)
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        _recalibrate(live, sub, [], classes=["rest", "open"], seconds_per_class=0.6)
        wait_for(sub, lambda topic, m: topic == "pred" and m["model"] == 2, 5.0)
        reply = live.client.rollback(1)
        assert reply["ok"] is True and reply["model"] == 1 and reply["previous"] == 2, reply
        seen = []
        ev = wait_event(sub, "rollback", 5.0, seen)
        assert ev["model"] == 1 and ev["previous"] == 2
        after = wait_for(sub, lambda topic, m: topic == "pred" and m["model"] == 1, 5.0, seen)
        # once the rollback is out, no prediction uses map 2 again
        later = _preds(collect(sub, 0.5))
        assert later and {p["model"] for p in later} == {1}
    assert live.client.status()["model"] == 1
    assert live.daemon.live.rotation == 0.0  # the identity map's, from its stored meta
    bad = live.client.rollback(9)
    assert bad["ok"] is False and "9" in bad["error"] and "[1, 2]" in bad["error"], bad
    none_before = live.client.rollback()  # from map 1 there is nothing earlier
    assert none_before["ok"] is False and "before version 1" in none_before["error"]
    assert live.client.status()["model"] == 1


# --------------------------------------------------------------------------- 4
def test_restart_on_the_same_state_dir_keeps_the_live_map(live, source, start_daemon):
    live.player.set_shift(1.0)
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        _recalibrate(live, sub, [], seconds_per_class=0.6)
    H2 = live.daemon.live.H.copy()
    # every map records its ring rotation: none for the identity, the roll the fit
    # started from for the recalibrated one (the armband moved by one electrode)
    rot2 = live.daemon.live.rotation
    assert live.daemon.store.load_map(1)[2]["map_rotation"] == 0.0
    assert live.daemon.store.load_map(2)[2]["map_rotation"] == rot2 and rot2 in (1.0, 7.0)
    live.daemon.stop()
    assert not live.daemon._thread.is_alive()
    # a new daemon on the same state dir and ports, without a bundle argument
    d2 = start_daemon(live.config)
    assert d2.bundle is not None
    np.testing.assert_array_equal(d2.bundle.components.means, source[0].components.means)
    assert d2.bundle.classes == live.classes
    client = Client(live.control, live.pub, timeout_s=5.0)
    with client.subscribe(("pred",)) as sub:
        first = wait_for(sub, lambda topic, m: topic == "pred", 20.0)
        status = client.status()
        assert status["model"] == 2 and status["maps"] == [1, 2], status
        assert [h["map_rotation"] for h in status["map_history"]] == [0.0, rot2]
        assert first["model"] == 2
        # the shifted armband is still classified well: map 2 (not the identity) is live
        acc, n = score(live.player, sub, live.classes)
    np.testing.assert_array_equal(d2.live.H, H2)
    assert d2.live.rotation == rot2  # resumed with the map
    assert n >= 20 and acc > 0.85, acc
    client.close()


# --------------------------------------------------------------------------- 5
def test_state_dir_holds_source_maps_and_raw_bursts(live, source):
    live.player.set_shift(1.0)
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        _recalibrate(live, sub, [], seconds_per_class=0.6)
    root = live.state_dir
    # source model: a plain npz, readable without pickle, equal to what was served
    with np.load(root / "source" / "model.npz", allow_pickle=False) as z:
        assert "header_json" in z.files
    loaded = SourceBundle.load(root / "source" / "model.npz")
    np.testing.assert_array_equal(loaded.components.means, source[0].components.means)
    assert (loaded.n_channels, loaded.fs) == (8, 500.0)
    # every map version
    for version in (1, 2):
        with np.load(root / "maps" / f"H_{version}.npz", allow_pickle=False) as z:
            assert z["H"].shape == (32, 32) and z["b"].shape == (32,)
            if version == 1:
                np.testing.assert_array_equal(z["H"], np.eye(32))
            else:
                np.testing.assert_array_equal(z["H"], live.daemon.live.H)
        meta = json.loads((root / "maps" / f"H_{version}.json").read_text())
        assert meta["version"] == version
    assert json.loads((root / "live.json").read_text())["version"] == 2
    # the burst: raw windows + features + labels + timestamps
    bursts = sorted((root / "bursts").glob("*.npz"))
    assert len(bursts) == 1
    with np.load(bursts[0], allow_pickle=False) as z:
        raw, X, labels, stamps = z["raw"], z["X"], z["labels"], z["timestamps"]
    n = len(X)
    assert raw.shape == (n, 100, 8) and X.shape == (n, 32) and labels.shape == (n,)
    assert stamps.shape == (n,) and np.all(np.diff(stamps) > 0)
    # every class prompted, about (0.6 - 0.2) / 0.05 + 1 = 9 windows each
    counts = {c: int((labels == c).sum()) for c in live.classes}
    assert all(7 <= k <= 10 for k in counts.values()), counts
    # features are the features of the stored raw windows (independent recomputation)
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=8, fs=500.0)
    np.testing.assert_allclose(np.array([ext.transform(w) for w in raw]), X, rtol=1e-12)
    # labels are what the armband performed at each window's last sample
    assert live.player.labels_at(stamps) == labels.tolist()
    burst_meta = json.loads(bursts[0].with_suffix(".json").read_text())
    assert burst_meta["purpose"] == "recalibrate" and burst_meta["n_windows"] == n


# --------------------------------------------------------------------------- 7
def test_manual_label_and_fit(live):
    live.player.set_shift(1.0)
    with live.client.subscribe(("pred", "event")) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 5.0)
        for cls in live.classes:
            live.player.set_class(cls)
            time.sleep(STEADY_S + 0.1)  # the windows from now on are entirely `cls`
            reply = live.client.label(cls)
            assert reply["ok"] is True and reply["label"] == cls, reply
            assert reply["state"] == "recording"
            time.sleep(0.5)
            reply = live.client.label(None)  # stop labelling before the next movement
            assert reply["ok"] is True and reply["label"] is None
        before = reply["windows"]
        time.sleep(0.2)
        assert live.client.label(None)["windows"] == before  # unlabelled windows are not kept
        seen = []
        reply = live.client.fit(min_windows=20)
        assert reply["ok"] is True and "error" not in reply, reply
        done = wait_event(sub, ("calibration_done", "calibration_failed"), 20.0, seen)
        assert done["kind"] == "calibration_done", done
        assert done["model"] == 2
        after, n = score(live.player, sub, live.classes)
    status = live.client.status()
    assert status["model"] == 2 and status["state"] == "streaming"
    bursts = sorted((live.state_dir / "bursts").glob("*.npz"))
    with np.load(bursts[-1], allow_pickle=False) as z:
        labels, stamps = z["labels"], z["timestamps"]
    assert set(labels.tolist()) == set(live.classes)
    assert len(labels) == before
    assert live.player.labels_at(stamps) == labels.tolist()
    assert after > 0.85, after


def test_a_guarded_recalibration_on_an_unshifted_arm_keeps_the_live_map(tmp_path, source,
                                                                        start_player,
                                                                        start_daemon):
    """``[transfer] guard = "on"``: the live map already classifies the burst, so the
    fit is refused with the held-out scores and map 1 keeps serving."""
    from daemon.conftest import daemon_config, free_port, unique_id

    bundle = source[0]
    sid = unique_id("guard")
    pub = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(tmp_path / "state", sid, pub=pub, EMTL_TRANSFER_GUARD='"on"')
    start_player(sid, follow_prompts=pub)
    start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_for(sub, lambda topic, m: topic == "pred", 20.0)
            seen = []
            reply = client.recalibrate(seconds_per_class=0.6)
            assert reply["ok"] is True, reply
            done = wait_event(sub, ("calibration_done", "calibration_failed"),
                              reply["duration_s"] + 20.0, seen)
            collect(sub, 0.5, seen)
        assert done["kind"] == "calibration_failed", done
        assert "held-out burst windows" in done["reason"] and done["model"] == 1
        assert done["guard"]["kept_live"] and done["guard"]["live"] >= done["guard"]["new"]
        assert isinstance(done["burst"], int)
        assert not [m for t, m in seen if t == "event" and m["kind"] == "model_swapped"]
        assert {m["model"] for t, m in seen if t == "pred"} == {1}
        status = client.status()
        assert status["model"] == 1 and status["state"] == "streaming"
    finally:
        client.close()
