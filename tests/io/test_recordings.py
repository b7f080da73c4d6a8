"""Recording readers and writers: npz (shared format), csv and xdf round trips, bad files."""

import os

import numpy as np
import pytest
from lsl_helpers import write_xdf

from emtl_stream.io.recordings import (CIIL_KEYS, Recording, load_ciil_session, load_recording,
                                       save_csv, save_recording)


def _rec(rng, n=300, ch=4, fs=250.0):
    emg = rng.standard_normal((n, ch)).astype(np.float32)
    labels = np.repeat(np.arange(3), n // 3)
    return Recording(emg=emg, fs=fs, labels=labels, class_names=["rest", "open", "close"],
                     seg_start=np.array([0, 100, 200]), seg_len=np.array([100, 100, 100]),
                     meta={"rep": np.zeros(n, np.int8), "subject": 7})


def test_npz_round_trip_is_exact(tmp_path, rng):
    rec = _rec(rng)
    path = tmp_path / "r.npz"
    save_recording(path, rec)
    back = load_recording(path)
    assert back.emg.dtype == np.float32
    np.testing.assert_array_equal(back.emg, rec.emg)
    np.testing.assert_array_equal(back.labels, rec.labels)
    assert back.class_names == rec.class_names and back.fs == 250.0
    np.testing.assert_array_equal(back.seg_start, rec.seg_start)
    np.testing.assert_array_equal(back.seg_len, rec.seg_len)
    assert back.meta["subject"] == 7
    np.testing.assert_array_equal(back.meta["rep"], rec.meta["rep"])
    # the atomic writer leaves no temporary file behind
    assert sorted(os.listdir(tmp_path)) == ["r.npz"]


def test_ciil_session_holds_the_files_arrays(emg_dir, tmp_path):
    path = emg_dir / "ciil_es_s04_baseline.npz"
    got = load_ciil_session(path)
    with np.load(path, allow_pickle=False) as z:
        for key in ("emg", "seg_start", "seg_len", "seg_class", "seg_rep", "seg_block"):
            np.testing.assert_array_equal(got[key], z[key])
        assert got["fs"] == float(z["fs"]) and got["subject"] == int(z["subject"])
        assert got["class_names"] == [str(c) for c in z["class_names"]]
        partial = {k: z[k] for k in CIIL_KEYS if k != "seg_rep"}
    assert got["name"] == path.name and got["condition"] == "baseline"
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ValueError, match="partial.npz lacks seg_rep"):
        load_ciil_session(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz"):
        load_ciil_session(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_ciil_session(tmp_path / "nothing.npz")


def test_reads_the_shared_recordings_like_numpy(emg_dir):
    path = emg_dir / "ciil_es_s00_shifted.npz"
    rec = load_recording(path)
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(rec.emg, z["emg"])
        np.testing.assert_array_equal(rec.labels, z["label"])
        assert rec.fs == float(z["fs"])
        assert rec.class_names == z["class_names"].tolist()
        np.testing.assert_array_equal(rec.seg_start, z["seg_start"])
        np.testing.assert_array_equal(rec.meta["rep"], z["rep"])
        assert rec.meta["condition"] == "shifted"


def test_csv_round_trip_with_text_labels(tmp_path, rng):
    rec = _rec(rng)
    rec.emg = rec.emg.astype(np.float64) / 3.0  # not float32-representable: exactness check
    stamps = 10.0 + np.arange(rec.n_samples) / rec.fs
    path = tmp_path / "r.csv"
    save_csv(path, rec, timestamps=stamps)
    back = load_recording(path)
    np.testing.assert_array_equal(back.emg, rec.emg)
    np.testing.assert_array_equal(back.labels, rec.labels)
    assert back.class_names == rec.class_names and back.fs == rec.fs
    np.testing.assert_array_equal(back.meta["timestamps"], stamps)
    assert back.channel_names == ["EMG1", "EMG2", "EMG3", "EMG4"]

    # a hand-written file: names as labels, fs passed in
    text = "a,b,label\n1,2,fist\n3,4,open\n5,6,fist\n"
    (tmp_path / "h.csv").write_text(text)
    h = load_recording(tmp_path / "h.csv", fs=100.0)
    np.testing.assert_array_equal(h.emg, [[1, 2], [3, 4], [5, 6]])
    assert h.class_names == ["fist", "open"]
    np.testing.assert_array_equal(h.labels, [0, 1, 0])


def test_xdf_emg_and_markers(tmp_path, rng):
    fs, n = 500.0, 1000
    emg = rng.standard_normal((n, 3)).astype(np.float32)
    t0 = 100.0
    markers = [(t0 + 0.5, "open"), (t0 + 1.2, "close"), (t0 + 1.6, "open")]
    path = tmp_path / "r.xdf"
    stamps = write_xdf(path, emg, fs, t0=t0, markers=markers, channel_labels=["x", "y", "z"])
    rec = load_recording(path)
    np.testing.assert_array_equal(rec.emg, emg)
    assert rec.fs == fs and rec.channel_names == ["x", "y", "z"]
    assert rec.class_names == ["open", "close"]
    # independent labelling: the last marker at or before each sample
    expected = np.full(n, -1)
    for t, lab in markers:
        expected[stamps >= t] = ["open", "close"].index(lab)
    np.testing.assert_array_equal(rec.labels, expected)
    np.testing.assert_allclose(rec.meta["timestamps"], stamps)


def test_xdf_without_markers_has_no_labels(tmp_path, rng):
    path = tmp_path / "r.xdf"
    write_xdf(path, rng.standard_normal((200, 2)), 200.0)
    rec = load_recording(path)
    assert rec.labels is None and rec.emg.shape == (200, 2)


@pytest.mark.parametrize("case", ["suffix", "missing", "corrupt", "no_emg_key", "object",
                                  "bad_label_len", "csv_no_fs", "csv_ragged", "csv_text",
                                  "xdf_garbage"])
def test_bad_files_give_clear_errors(tmp_path, case):
    if case == "suffix":
        p = tmp_path / "r.mat"
        p.write_text("x")
        with pytest.raises(ValueError, match=r"unknown suffix '\.mat'.*\.npz"):
            load_recording(p)
    elif case == "missing":
        with pytest.raises(FileNotFoundError, match="nope.npz"):
            load_recording(tmp_path / "nope.npz")
    elif case == "corrupt":
        p = tmp_path / "r.npz"
        p.write_bytes(b"not a zip at all")
        with pytest.raises(ValueError, match="not a readable .npz"):
            load_recording(p)
    elif case == "no_emg_key":
        p = tmp_path / "r.npz"
        np.savez(p, data=np.zeros((3, 2)), fs=100.0)
        with pytest.raises(ValueError, match=r"lacks \['emg'\].*found keys \['data', 'fs'\]"):
            load_recording(p)
    elif case == "object":
        p = tmp_path / "r.npz"
        np.savez(p, emg=np.zeros((3, 2)), fs=100.0, meta=np.array([{"a": 1}], dtype=object))
        with pytest.raises(ValueError, match="without pickle"):
            load_recording(p)
    elif case == "bad_label_len":
        p = tmp_path / "r.npz"
        np.savez(p, emg=np.zeros((3, 2)), fs=100.0, label=np.zeros(5, int))
        with pytest.raises(ValueError, match=r"r\.npz: labels must be integers of shape \(3,\)"):
            load_recording(p)
    elif case == "csv_no_fs":
        p = tmp_path / "r.csv"
        p.write_text("a,b\n1,2\n")
        with pytest.raises(ValueError, match="no sampling rate; add a '# fs=1000' line"):
            load_recording(p)
    elif case == "csv_ragged":
        p = tmp_path / "r.csv"
        p.write_text("# fs=10\na,b\n1,2\n3\n")
        with pytest.raises(ValueError, match="line 4: 1 values for 2 columns"):
            load_recording(p)
    elif case == "csv_text":
        p = tmp_path / "r.csv"
        p.write_text("# fs=10\na,b\n1,zz\n")
        with pytest.raises(ValueError, match="not a number"):
            load_recording(p)
    elif case == "xdf_garbage":
        p = tmp_path / "r.xdf"
        p.write_bytes(b"nothing like XDF")
        with pytest.raises(ValueError, match="not a readable XDF"):
            load_recording(p)


def test_save_refuses_object_meta_and_wrong_suffix(tmp_path, rng):
    rec = _rec(rng)
    with pytest.raises(ValueError, match=r"\.npz only"):
        save_recording(tmp_path / "r.csv", rec)
    rec.meta["bad"] = {"nested": 1}
    with pytest.raises(ValueError, match=r"meta\['bad'\] has object dtype"):
        save_recording(tmp_path / "r.npz", rec)
    assert os.listdir(tmp_path) == []
