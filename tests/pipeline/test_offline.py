"""Offline windowing and featurisation of whole recordings."""

import numpy as np
import pytest

from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.io.recordings import load_ciil_session
from emtl_stream.pipeline.offline import ciil_features, featurize, segment_windows
from naive.features import mav_wl


def test_segment_windows_stay_strictly_inside_segments(rng):
    emg = rng.normal(size=(100, 2))
    starts, lens = np.array([0, 30, 33, 70]), np.array([30, 3, 37, 30])
    W, seg, off = segment_windows(emg, starts, lens, 10, 4)
    expected = [(k, o) for k in range(4) for o in range(0, lens[k] - 10 + 1, 4)]
    assert list(zip(seg.tolist(), off.tolist())) == expected
    assert 1 not in seg  # a 3-sample segment holds no 10-sample window
    for w, k, o in zip(W, seg, off):
        assert o + 10 <= lens[k]
        np.testing.assert_array_equal(w, emg[starts[k] + o:starts[k] + o + 10])


def test_segment_windows_without_segments_is_one_segment(rng):
    emg = rng.normal(size=(50, 1))
    W, seg, off = segment_windows(emg, None, None, 20, 15)
    assert off.tolist() == [0, 15, 30] and (seg == 0).all()
    with pytest.raises(ValueError, match="outside the recording"):
        segment_windows(emg, [40], [20], 5, 5)
    with pytest.raises(ValueError, match="both seg_start and seg_len"):
        segment_windows(emg, [0], None, 5, 5)


def test_featurize_drops_nonfinite_windows(rng):
    ext = FeatureExtractor(("mav",), 1, 200.0)
    emg = rng.normal(size=(100, 1))
    emg[55] = np.nan
    X, seg, off = featurize(emg, 200.0, ext, 200, 50)
    assert off.tolist() == [0, 10, 60]
    np.testing.assert_allclose(X[:, 0], [np.abs(emg[o:o + 40]).mean() for o in off])
    with pytest.raises(ValueError, match="fs=100.0 Hz differs"):
        featurize(emg, 100.0, ext, 200, 50)


def test_ciil_features_follow_the_readme_recipe(emg_dir):
    path = emg_dir / "ciil_es_s11_baseline.npz"  # has a 190-sample segment
    ext = FeatureExtractor(("mav", "wl"), 8, 200.0)
    d = ciil_features(load_ciil_session(path), ext)
    with np.load(path, allow_pickle=False) as z:
        emg, label, rep = z["emg"], z["label"], z["rep"]
        X, y, r = [], [], []
        for s, n, c, rr in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
            seg = emg[s:s + n]
            for a in range(0, n - 40 + 1, 10):
                w = seg[a:a + 40]
                X.append(mav_wl(w))
                y.append(c)
                r.append(rr)
    X = np.array(X)
    # the README's layout is feature-major (MAV of all channels, then WL): reorder ours
    ours = d["X"].reshape(-1, 8, 2).transpose(0, 2, 1).reshape(-1, 16)
    np.testing.assert_allclose(ours, X, rtol=1e-6)
    np.testing.assert_array_equal(d["y"], y)
    np.testing.assert_array_equal(d["rep"], r)
    assert d["class_names"][2] == "No_Motion"
    assert d["offset_s"].min() == pytest.approx(0.2)
    # every sample of every window carries the window's label and repetition
    starts = np.load(path)["seg_start"][d["seg_index"]] + np.round(
        (d["offset_s"] - 0.2) * 200).astype(int)
    for s, yy, rr in zip(starts[::25], d["y"][::25], d["rep"][::25]):
        assert (label[s:s + 40] == yy).all() and (rep[s:s + 40] == rr).all()
    with pytest.raises(ValueError, match="extractor expects 4"):
        ciil_features(load_ciil_session(path), FeatureExtractor(n_channels=4))
