"""tools/convert_libemg_ciil.py on a small folder in LibEMG's ElectrodeShift layout.

The test writes the CSVs itself, so the expected arrays are known independently of
the converter; the output must also have exactly the keys of the shared recordings
and load through the project's own reader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from emtl_stream.evaluate import find_subjects
from emtl_stream.io.recordings import load_recording

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "convert_libemg_ciil.py"
NAMES = ["Hand_Close", "Hand_Open", "No_Motion", "Wrist_Extension", "Wrist_Flexion"]


def make_libemg_folder(root: Path, subjects=(0, 13)) -> dict:
    """CSV files as CIIL_ElectrodeShift downloads them; returns {(sid, folder, rep, cls): data}."""
    rng = np.random.default_rng(4)
    written = {}
    for sid in subjects:
        folders = [("training", 5)] + [(f"trial_{b}", 2) for b in range(1, 5)]
        if sid == 13:
            folders.append(("trial_0", 1))  # undocumented extra block: skipped
        for folder, n_reps in folders:
            d = root / f"subject{sid}" / folder
            d.mkdir(parents=True)
            meta = {"continuous": False}
            for rep in range(n_reps):
                for cls in range(5):
                    data = rng.integers(-128, 128, size=(rng.integers(20, 40), 8))
                    np.savetxt(d / f"R_{rep}_C_{cls}.csv", data, fmt="%d", delimiter=",")
                    written[(sid, folder, rep, cls)] = data
                    meta[f"data/subject{sid}/sgt/{folder}/R_{rep}_C_{cls}.csv"] = {
                        "rep_idx": rep, "class_idx": cls, "class_name": NAMES[cls]}
            (d / "metadata.json").write_text(json.dumps(meta))
    return written


def test_converter_writes_the_shared_layout(tmp_path, emg_dir):
    src, out = tmp_path / "ElectrodeShift", tmp_path / "emg"
    written = make_libemg_folder(src)
    proc = subprocess.run([sys.executable, SCRIPT, src, out], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.glob("*.npz"))
    assert files == ["ciil_es_s00_baseline.npz", "ciil_es_s00_shifted.npz",
                     "ciil_es_s13_baseline.npz", "ciil_es_s13_shifted.npz"]
    with np.load(emg_dir / "ciil_es_s00_baseline.npz") as real, \
            np.load(out / "ciil_es_s00_baseline.npz") as ours:
        assert set(ours.files) == set(real.files)
        for key in real.files:
            assert ours[key].dtype.kind == real[key].dtype.kind, key
    for sid in (0, 13):
        for condition, order in (
                ("baseline", [("training", 0, r, r) for r in range(5)]),
                ("shifted", [(f"trial_{b}", b, r, 2 * (b - 1) + r)
                             for b in range(1, 5) for r in range(2)])):
            with np.load(out / f"ciil_es_s{sid:02d}_{condition}.npz") as z:
                expected = [(written[(sid, f, r, c)], c, rep, block, r)
                            for f, block, r, rep in order for c in range(5)]
                np.testing.assert_array_equal(z["emg"], np.concatenate([e[0] for e in expected]))
                lengths = [len(e[0]) for e in expected]
                np.testing.assert_array_equal(z["seg_len"], lengths)
                np.testing.assert_array_equal(z["seg_start"], np.r_[0, np.cumsum(lengths)[:-1]])
                np.testing.assert_array_equal(z["seg_class"], [e[1] for e in expected])
                np.testing.assert_array_equal(z["seg_rep"], [e[2] for e in expected])
                np.testing.assert_array_equal(z["seg_block"], [e[3] for e in expected])
                np.testing.assert_array_equal(z["seg_rep_in_block"], [e[4] for e in expected])
                np.testing.assert_array_equal(z["label"], np.repeat([e[1] for e in expected],
                                                                    lengths))
                np.testing.assert_array_equal(z["rep"], np.repeat([e[2] for e in expected],
                                                                  lengths))
                assert z["class_names"].tolist() == NAMES
                assert float(z["fs"]) == 200.0 and int(z["subject"]) == sid
                assert int(z["shift_deg"]) == (0 if condition == "baseline" else 45)
                assert "trial_0" not in str(z["source"])
            rec = load_recording(out / f"ciil_es_s{sid:02d}_{condition}.npz")
            assert rec.class_names == NAMES and rec.fs == 200.0
    assert [s for s, _, _ in find_subjects(out)] == [0, 13]


def test_converter_names_a_wrong_folder(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, tmp_path, tmp_path / "out"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "subject<N>" in proc.stderr
