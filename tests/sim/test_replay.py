"""Replayer over real LSL on loopback: exact replay, live features = offline features,
markers and ground truth, prompts over a real ZeroMQ PUB, shifts, run_replay."""

import json
import time

import numpy as np
import pylsl
import pytest
import zmq
from lsl_helpers import pull_until, unique_id

from emtl_stream.io.lsl_inlet import EMGInlet
from emtl_stream.io.recordings import Recording, load_recording, save_recording
from emtl_stream.sim.replay import Replayer, run_replay
from emtl_stream.pipeline.features import FeatureExtractor, FeaturePipeline
from emtl_stream.pipeline.filters import StreamingFilter
from emtl_stream.pipeline.offline import featurize
from emtl_stream.sim.synthetic import SyntheticArmband


def _connect(source_id, **kw):
    inlet = EMGInlet(source_id=source_id, resolve_timeout=10.0, **kw)
    desc = inlet.connect()
    return inlet, desc


@pytest.mark.parametrize("filtered", [False, True], ids=["raw", "bandpass+notch"])
def test_live_features_of_a_replayed_recording_equal_offline_features(emg_dir, filtered):
    rec = load_recording(emg_dir / "ciil_es_s01_baseline.npz")
    n = 6000  # 30 s of the recording, replayed as fast as possible
    part = Recording(emg=rec.emg[:n], fs=rec.fs, labels=rec.labels[:n],
                     class_names=rec.class_names)
    sid = unique_id()
    player = Replayer(part, name="rec", source_id=sid, rate=0, wait_for_consumer_s=10.0)
    player.start()  # holds the first sample until the inlet below is connected
    # the inlet buffer (in nominal seconds) must hold the whole fast replay
    inlet, desc = _connect(sid, max_buflen_s=60, expected_channels=8, expected_rate=200.0)
    assert desc.type == "EMG" and desc.channel_format == "float32"
    extractor = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=8, fs=200.0)
    def filt():
        return StreamingFilter(200.0, 8, bandpass=(20.0, 90.0), notch=50.0) if filtered else None

    pipe = FeaturePipeline(extractor, 200.0, 50.0, filter=filt())
    live, stamps = [], []
    deadline = time.monotonic() + 30.0
    while pipe.n_samples < n and time.monotonic() < deadline:
        s, t = inlet.pull(timeout=0.05)
        if len(t):
            stamps.append(t.copy())
            live.extend(w.x for w in pipe.push(s, t))
    assert pipe.n_samples == n and inlet.n_gaps == 0
    X_off, _, _ = featurize(part.emg, part.fs, extractor, 200.0, 50.0, filter=filt())
    X_live = np.array(live)
    assert X_live.shape == X_off.shape
    # chunk-wise filtering equals filtering at once up to rounding; no filter: exact
    np.testing.assert_allclose(X_live, X_off, rtol=1e-9 if filtered else 0,
                               atol=1e-9 if filtered else 0)
    # ground truth: the class in effect at each sample's timestamp is its label
    ts = np.concatenate(stamps)
    truth = player.labels_at(ts)
    expected = [part.class_names[i] for i in part.labels]
    assert truth == expected
    player.stop()
    inlet.close()
    # a stable source_id: same name and content, same id
    assert Replayer(part, name="rec").source_id == Replayer(part, name="rec").source_id
    assert Replayer(part, name="rec").source_id != Replayer(part, name="other").source_id


def test_shift_rolls_channels_and_the_counter_channel_counts(rng):
    emg = rng.standard_normal((400, 5)).astype(np.float32)
    rec = Recording(emg=emg, fs=500.0)
    sid = unique_id()
    player = Replayer(rec, name="sh", source_id=sid, rate=0, shift=2, counter_channel=True,
                      wait_for_consumer_s=10.0, markers=False)
    player.start()
    inlet, desc = _connect(sid, max_buflen_s=10)
    data, stamps, _ = pull_until(inlet, 400, timeout_s=10.0)
    expected = np.roll(emg, 2, axis=1)
    np.testing.assert_array_equal(data[:, 1:], expected[:, 1:])
    np.testing.assert_array_equal(data[:, 0], np.arange(400))
    assert desc.channel_labels[0] == "counter"
    np.testing.assert_allclose(np.diff(stamps), 1 / 500.0, atol=1e-9)
    assert player.join(5.0)  # a finite recording ends by itself
    inlet.close()
    with pytest.raises(ValueError, match="fractional"):
        Replayer(rec, shift=0.5)


def test_markers_carry_class_changes_and_match_the_ground_truth():
    arm = SyntheticArmband(4, 500.0, seed=1)
    sid = unique_id()
    player = Replayer(arm, name="mk", source_id=sid, rate=0, wait_for_consumer_s=10.0,
                      class_schedule=[("open", 0.1), ("close", 0.2), ("rest", 0.1)],
                      loop=True, seconds=1.2, counter_channel=True)
    player.start()
    found = pylsl.resolve_byprop("source_id", sid + "-markers", 1, 10.0)
    assert found, "marker stream not found"
    markers = pylsl.StreamInlet(found[0])
    markers.open_stream(10.0)
    inlet, _ = _connect(sid, max_buflen_s=10)
    data, stamps, _ = pull_until(inlet, 600, timeout_s=10.0)
    assert len(data) == 600  # seconds=1.2 at 500 Hz
    assert player.join(5.0)
    got = []
    deadline = time.monotonic() + 5.0
    while len(got) < 9 and time.monotonic() < deadline:
        sample, t = markers.pull_sample(timeout=0.2)
        if sample is not None:
            got.append((t, sample[0]))
    assert [g[1] for g in got] == ["open", "close", "rest"] * 3  # 600 samples = 3 cycles
    # independently: the schedule in samples gives the class of every sample
    period = np.r_[["open"] * 50, ["close"] * 100, ["rest"] * 50]
    expected = list(np.resize(period, 600))
    assert player.labels_at(stamps) == expected
    changes = player.labels_between(stamps[0], stamps[-1])
    assert [c for _, c in changes] == ["open", "close", "rest"] * 3
    np.testing.assert_allclose([t for t, _ in changes], [t for t, _ in got], atol=1e-9)
    inlet.close()


def test_follow_prompts_from_a_real_zmq_pub():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    arm = SyntheticArmband(4, 500.0, seed=2)
    player = Replayer(arm, name="pr", source_id=unique_id(), follow_prompts=f"tcp://127.0.0.1:{port}",
                      markers=False)
    player.start()
    try:
        deadline = time.monotonic() + 10.0
        while player._class != "flex" and time.monotonic() < deadline:
            pub.send(b"prompt not json")  # malformed: logged and ignored
            pub.send(b"prompt " + json.dumps({"v": 1, "class": "wave"}).encode())  # unknown
            pub.send(b"prompt " + json.dumps({"v": 1, "class": "flex", "remaining_s": 1.0,
                                              "step": 1, "of": 2}).encode())
            time.sleep(0.05)
        assert player._class == "flex"
        time.sleep(0.1)  # at least one chunk performed
        now = pylsl.local_clock()
        assert player.label_at(now) == "flex"
        assert player.labels_between(0.0, now)[-1][1] == "flex"
        assert player.error is None
    finally:
        player.stop()
        pub.close()


def test_run_replay_plays_a_file_to_the_end(tmp_path, rng):
    path = tmp_path / "r.npz"
    save_recording(path, Recording(emg=rng.standard_normal((300, 3)).astype(np.float32),
                                   fs=1000.0))
    assert run_replay(path, rate=0, shift=1, loop=False, name=unique_id("rr"), synthetic=False,
                      n_channels=8, fs=1000.0, seconds=0.0, follow_prompts=None) == 0
    assert run_replay(None, rate=0, shift=0.5, loop=False, name=unique_id("rs"), synthetic=True,
                      n_channels=4, fs=500.0, seconds=0.2, follow_prompts=None) == 0
