"""``emtl-stream train``: recordings with NaN stretches, and the filter recorded in the
bundle so the daemon serves exactly the features the model was trained on."""

from __future__ import annotations

import numpy as np
import pytest

from emtl_stream.cli import build_parser
from emtl_stream.commands import train
from emtl_stream.daemon.bundle import SourceBundle, fit_source_model
from emtl_stream.io.recordings import Recording, load_recording, save_recording
from emtl_stream.pipeline.offline import featurize

FS, CH = 200.0, 8


def _recording(rng, nan_stretch: bool) -> Recording:
    """Four classes, three held segments each; class c scales channel c by (2 + c)."""
    seg_len, gap = 400, 100
    n_seg = 12
    n = n_seg * (seg_len + gap)
    emg = rng.normal(size=(n, CH))
    labels = np.full(n, -1, dtype=np.int64)
    seg_start = np.arange(n_seg) * (seg_len + gap) + gap
    for i, s in enumerate(seg_start):
        c = i % 4
        emg[s:s + seg_len, c] *= 2.0 + c
        emg[s:s + seg_len, (c + 4) % CH] *= 2.0 + c
        labels[s:s + seg_len] = c
    if nan_stretch:
        emg[seg_start[5] + 100:seg_start[5] + 160] = np.nan  # a dropout inside segment 5
    return Recording(emg=emg, fs=FS, labels=labels, class_names=["rest", "fist", "open", "pinch"],
                     seg_start=seg_start, seg_len=np.full(n_seg, seg_len))


def _train(tmp_path, rec, config_text="", *extra):
    path = tmp_path / "rec.npz"
    save_recording(path, rec)
    cfg = tmp_path / "config.toml"
    cfg.write_text(config_text)
    out = tmp_path / "model.npz"
    args = build_parser().parse_args(["train", str(path), "--out", str(out), "--config", str(cfg),
                                      *extra])
    assert train(args) == 0
    return SourceBundle.load(out), load_recording(path)


def _labels_of(rec, bundle, seg_index, offset):
    """Label of each window's last sample, from featurize's own window positions."""
    win = int(round(bundle.window_ms * rec.fs / 1000))
    last = np.asarray(rec.seg_start)[seg_index] + offset + win - 1
    return np.asarray(rec.class_names)[rec.labels[last]]


def test_train_on_a_recording_with_a_nan_stretch(tmp_path, rng):
    """Used to crash with IndexError: the dropped NaN windows shifted every later label."""
    bundle, rec = _train(tmp_path, _recording(rng, nan_stretch=True))
    X, seg_index, offset = featurize(rec.emg, rec.fs, bundle.make_extractor(), bundle.window_ms,
                                     bundle.step_ms, rec.seg_start, rec.seg_len)
    n_all = featurize(np.nan_to_num(rec.emg), rec.fs, bundle.make_extractor(), bundle.window_ms,
                      bundle.step_ms, rec.seg_start, rec.seg_len)[0].shape[0]
    assert 0 < n_all - len(X) < 10  # windows touching the stretch were dropped
    y = _labels_of(rec, bundle, seg_index, offset)
    twin = fit_source_model(X, y)  # the same fit, from independently derived labels
    np.testing.assert_allclose(bundle.components.means, twin.to_components().means, rtol=1e-12)


FILTERED = "[features]\nbandpass = [20.0, 90.0]\nnotch = 50.0\n"


def test_train_applies_and_records_the_filter_the_daemon_will_use(tmp_path, rng):
    bundle, rec = _train(tmp_path, _recording(rng, nan_stretch=False), FILTERED)
    assert bundle.filter == {"bandpass": [20.0, 90.0], "notch": 50.0, "order": 4}
    filt = bundle.make_filter(CH, FS)
    assert filt.band == (20.0, 90.0) and filt.notch == 50.0
    X, seg_index, offset = featurize(rec.emg, rec.fs, bundle.make_extractor(), bundle.window_ms,
                                     bundle.step_ms, rec.seg_start, rec.seg_len, filter=filt)
    twin = fit_source_model(X, _labels_of(rec, bundle, seg_index, offset))
    np.testing.assert_allclose(bundle.components.means, twin.to_components().means, rtol=1e-12)
    # and it is not what an unfiltered training gives
    plain, _ = _train(tmp_path / "plain", rec)
    assert plain.filter == {"bandpass": None, "notch": None, "order": 4}
    assert plain.make_filter(CH, FS) is None
    assert not np.allclose(plain.components.means, bundle.components.means)


def test_bundle_filter_round_trip_and_bundles_without_a_record(tmp_path, rng):
    bundle, _ = _train(tmp_path, _recording(rng, nan_stretch=False), FILTERED)
    again = SourceBundle.load(bundle.save(tmp_path / "again.npz"))
    assert again.filter == bundle.filter
    old = SourceBundle(components=bundle.components, features=bundle.features,
                       window_ms=bundle.window_ms, step_ms=bundle.step_ms, n_channels=CH, fs=FS)
    old = SourceBundle.load(old.save(tmp_path / "old.npz"))
    assert old.filter is None  # trained before the filter was recorded
    assert old.make_filter(CH, FS) is None
    fallback = {"bandpass": [10.0, 80.0], "notch": None, "order": 2}
    f = old.make_filter(CH, FS, fallback=fallback)
    assert f.band == (10.0, 80.0) and f.notch is None and f.order == 2
    assert bundle.make_filter(CH, FS, fallback=fallback).band == (20.0, 90.0)  # record wins
    with pytest.raises(ValueError, match="filter"):
        SourceBundle(components=bundle.components, features=bundle.features, window_ms=200.0,
                     step_ms=50.0, n_channels=CH, fs=FS, filter={"bandpass": [1.0]})
