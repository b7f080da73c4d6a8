"""Recording a live stream: labels from markers, the written file and what train makes of it.

A real :class:`Replayer` (synthetic armband, class schedule, its Markers outlet)
is recorded over LSL; the labels written are checked against the replayer's own
ground truth (:meth:`Replayer.labels_at`), an independent record of what it played.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from lsl_helpers import unique_id

from emtl_stream.daemon.bundle import SourceBundle
from emtl_stream.io.record import markers_in_force_from, markers_to_labels, record_streams
from emtl_stream.io.recordings import Recording, load_recording
from emtl_stream.sim.replay import Replayer
from emtl_stream.io.xdf_write import save_xdf
from emtl_stream.sim.synthetic import SyntheticArmband

CLI = [sys.executable, "-m", "emtl_stream"]


def test_markers_to_labels_hold_until_the_next_marker():
    stamps = np.arange(10.0)
    labels, names = markers_to_labels(
        [("open", 2.0), ("fist", 5.0), ("none", 7.0), ("fit", 8.0), ("open", 8.5)], stamps)
    assert names == ["open", "fist"]
    assert labels.tolist() == [-1, -1, 0, 0, 0, 1, 1, -1, -1, 0]
    assert markers_to_labels([], stamps)[0].tolist() == [-1] * 10


def test_the_marker_in_force_at_the_first_sample_is_kept_though_stamped_before_it(tmp_path):
    # the marker labelling the first kept sample is stamped a little before it
    # (separate clock corrections); dropping it left the first segment unlabelled
    stamps = 100.0 + np.arange(1500) / 500.0
    marks = [("rest", 99.0), ("open", stamps[0] - 1e-4), ("close", 101.0)]
    kept = markers_in_force_from(marks, stamps[0])
    assert kept == marks[1:]
    rec = Recording(emg=np.zeros((1500, 2)), fs=500.0)
    save_xdf(tmp_path / "r.xdf", rec, stamps, kept, stream_name="armband")
    back = load_recording(tmp_path / "r.xdf")
    np.testing.assert_array_equal(back.labels, markers_to_labels(marks, stamps)[0] - 1)
    assert markers_in_force_from([("open", 5.0)], 1.0) == [("open", 5.0)]


def test_xdf_written_here_reads_back_with_pyxdf(tmp_path):
    rng = np.random.default_rng(1)
    emg = rng.normal(size=(2500, 3))
    stamps = 50.0 + np.arange(2500) / 500.0
    rec = Recording(emg=emg, fs=500.0, channel_names=["a", "b", "c"])
    save_xdf(tmp_path / "r.xdf", rec, stamps, [("rest", 50.0), ("fist", 52.0)],
             stream_name="armband")
    back = load_recording(tmp_path / "r.xdf")
    np.testing.assert_array_equal(back.emg, emg)
    assert back.fs == 500.0 and back.channel_names == ["a", "b", "c"]
    assert back.class_names == ["rest", "fist"]
    np.testing.assert_array_equal(back.labels, (stamps >= 52.0).astype(int))


@pytest.fixture
def player():
    name = unique_id("rec")
    p = Replayer(SyntheticArmband(n_channels=4, fs=500.0, seed=3), name=name, source_id=name,
                 class_schedule=[("rest", 0.7), ("open", 0.7), ("close", 0.7)], loop=True)
    p.start()
    yield p
    p.stop()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".npz", ".csv", ".xdf"])
def test_record_labels_every_sample_as_the_replayer_played_it(tmp_path, player, suffix):
    out = tmp_path / f"rec{suffix}"
    lines = []
    rec = record_streams(player.name, None, "EMG", player.name + "-markers", 3.0, out,
                         resolve_timeout=10.0, announce=lines.append)
    assert rec.n_channels == 4 and rec.fs == 500.0
    assert "labelled by markers" in lines[0]
    back = load_recording(out)
    assert back.n_samples == rec.n_samples > 500  # the unlabelled head is left out
    np.testing.assert_allclose(back.emg, rec.emg, rtol=1e-6)
    truth = player.labels_at(rec.meta["timestamps"])
    got = [back.class_names[i] for i in back.labels]
    agree = np.mean(np.asarray(got) == np.asarray(truth, dtype=object))
    assert agree > 0.99, agree  # a few samples of LSL timestamp jitter at class changes
    assert set(back.class_names) == {"rest", "open", "close"}


@pytest.mark.slow
def test_record_and_train_from_the_command_line(tmp_path, player):
    out = tmp_path / "rec.npz"
    proc = subprocess.run(CLI + ["record", out, "--stream", player.name, "--seconds", "4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "labelled" in proc.stdout and "4 ch @ 500 Hz" in proc.stdout
    progress = [ln for ln in proc.stderr.splitlines() if " / 4 s" in ln]
    assert 1 <= len(progress) <= 4, proc.stderr  # not a line per pull
    model = tmp_path / "model.npz"
    proc = subprocess.run(CLI + ["train", out, "--out", model], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    bundle = SourceBundle.load(model)
    assert (bundle.n_channels, bundle.fs) == (4, 500.0)
    assert sorted(bundle.classes) == ["close", "open", "rest"]


def test_record_without_the_stream_fails_in_one_line(tmp_path):
    proc = subprocess.run(CLI + ["record", tmp_path / "x.npz", "--stream", unique_id("none"),
                                 "--seconds", "1", "--resolve-timeout", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "emtl-stream record:" in lines[0], proc.stderr
    assert not (tmp_path / "x.npz").exists()


def _burst(tmp_path, meta):
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (40, 16)), rng.normal(3, 1, (40, 16))]
    labels = np.array(["rest"] * 40 + ["fist"] * 40)
    path = tmp_path / "burst_1.npz"
    np.savez(path, X=X, labels=labels, timestamps=np.arange(80.0))
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path, X, labels


def test_train_on_a_saved_burst_needs_the_stream_shape(tmp_path):
    path, X, labels = _burst(tmp_path, {"purpose": "train", "window_ms": 200.0,
                                        "step_ms": 50.0})
    proc = subprocess.run(CLI + ["train", path, "--out", tmp_path / "m.npz"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "calibration burst" in proc.stderr
    assert "lacks" not in proc.stderr
    path, X, labels = _burst(tmp_path, {"purpose": "train", "window_ms": 200.0,
                                        "step_ms": 50.0, "n_channels": 4, "fs": 500.0})
    proc = subprocess.run(CLI + ["train", path, "--out", tmp_path / "m.npz"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    bundle = SourceBundle.load(tmp_path / "m.npz")
    assert (bundle.n_channels, bundle.fs) == (4, 500.0)
    assert sorted(bundle.classes) == ["fist", "rest"]


def test_train_on_a_saved_burst_takes_the_stream_shape_from_its_raw_windows(tmp_path):
    rng = np.random.default_rng(2)
    X = np.r_[rng.normal(0, 1, (30, 16)), rng.normal(3, 1, (30, 16))]
    labels = np.array(["rest"] * 30 + ["fist"] * 30)
    path = tmp_path / "000001.npz"
    # 200 ms windows of 100 samples and 4 channels: a 500 Hz, 4-channel stream
    np.savez(path, X=X, labels=labels, raw=np.zeros((60, 100, 4), np.float32))
    path.with_suffix(".json").write_text(json.dumps({"window_ms": 200.0, "step_ms": 50.0}))
    proc = subprocess.run(CLI + ["train", path, "--out", tmp_path / "m.npz"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    bundle = SourceBundle.load(tmp_path / "m.npz")
    assert (bundle.n_channels, bundle.fs) == (4, 500.0)
