"""Convert LibEMG's CIIL electrode-shift recordings to the ``.npz`` layout emtl_stream reads.

Input: the ``ElectrodeShift`` folder of the ``LibEMG/CIILData`` repository (what
LibEMG's ``CIIL_ElectrodeShift`` dataset class downloads), laid out as::

    ElectrodeShift/subject<N>/training/R_<rep>_C_<class>.csv     before the shift, reps 0-4
    ElectrodeShift/subject<N>/trial_<b>/R_<rep>_C_<class>.csv    after it, b = 1..4, reps 0-1
    ElectrodeShift/subject<N>/<folder>/metadata.json             class names (optional)

Each CSV holds one held gesture: one row per sample, 8 comma-separated Myo values
(200 Hz), no header. Output per subject: ``ciil_es_s<NN>_baseline.npz`` (folder
``training``) and ``ciil_es_s<NN>_shifted.npz`` (``trial_1`` .. ``trial_4``), each with
the segments concatenated in (block, repetition, class) order and the keys ``emg``
(N, 8) float32, ``label``/``rep``/``block`` (N,) int8, ``seg_start``/``seg_len`` int32,
``seg_class``/``seg_rep``/``seg_block``/``seg_rep_in_block`` int16, ``fs``, ``n_channels``,
``subject``, ``condition``, ``shift_deg``, ``class_names``, ``device``, ``source``.
``rep`` of a shifted file is ``2 * (block - 1) + repetition in block``. Folders other
than these (an undocumented ``trial_0``) are skipped. Files are written atomically.

Usage::

    python tools/convert_libemg_ciil.py ElectrodeShift OUT_DIR [--subjects 0,1,2]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import numpy as np

FS = 200.0
N_CHANNELS = 8
# Class order of the recording metadata (class index -> name); used when a folder
# has no metadata.json.
DEFAULT_CLASS_NAMES = ("Hand_Close", "Hand_Open", "No_Motion", "Wrist_Extension",
                       "Wrist_Flexion")
_CSV = re.compile(r"^R_(\d+)_C_(\d+)\.csv$")
_SUBJECT = re.compile(r"^subject(\d+)$")


class ConversionError(ValueError):
    """The input folder does not have the expected layout; the message says where."""


def _class_names(folder: Path) -> list[str]:
    meta = folder / "metadata.json"
    names = dict(enumerate(DEFAULT_CLASS_NAMES))
    if meta.is_file():
        for entry in json.loads(meta.read_text()).values():
            if isinstance(entry, dict) and "class_idx" in entry and "class_name" in entry:
                names[int(entry["class_idx"])] = str(entry["class_name"])
    return [names[i] for i in sorted(names)]


def _read_segment(path: Path) -> np.ndarray:
    try:
        data = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise ConversionError(f"{path}: not a CSV of numbers ({exc})") from None
    if data.shape[1] != N_CHANNELS or data.shape[0] == 0:
        raise ConversionError(f"{path}: expected rows of {N_CHANNELS} values, got shape "
                              f"{data.shape}")
    return data


def convert_condition(subject_dir: Path, folders: list[tuple[str, int]], condition: str,
                      subject: int) -> dict[str, np.ndarray] | None:
    """Arrays of one output file from ``folders`` ((folder name, block) pairs), or
    ``None`` when none of them exists."""
    present = [(name, block) for name, block in folders if (subject_dir / name).is_dir()]
    if not present:
        return None
    segments = []
    class_names = None
    for name, block in present:
        folder = subject_dir / name
        class_names = class_names or _class_names(folder)
        files = []
        for f in folder.iterdir():
            m = _CSV.match(f.name)
            if m:
                files.append((int(m.group(1)), int(m.group(2)), f))
        if not files:
            raise ConversionError(f"{folder} holds no R_<rep>_C_<class>.csv files")
        for rep_in_block, cls, f in sorted(files):
            rep = rep_in_block if block == 0 else 2 * (block - 1) + rep_in_block
            segments.append((block, rep, rep_in_block, cls, _read_segment(f)))
    segments.sort(key=lambda s: (s[0], s[2], s[3]))
    lengths = np.array([len(s[4]) for s in segments], np.int32)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int32)

    def per_sample(values, dtype):
        return np.repeat(np.asarray(values, dtype), lengths)

    return {
        "emg": np.concatenate([s[4] for s in segments]).astype(np.float32),
        "label": per_sample([s[3] for s in segments], np.int8),
        "rep": per_sample([s[1] for s in segments], np.int8),
        "block": per_sample([s[0] for s in segments], np.int8),
        "seg_start": starts, "seg_len": lengths,
        "seg_class": np.array([s[3] for s in segments], np.int16),
        "seg_rep": np.array([s[1] for s in segments], np.int16),
        "seg_block": np.array([s[0] for s in segments], np.int16),
        "seg_rep_in_block": np.array([s[2] for s in segments], np.int16),
        "fs": np.float32(FS), "n_channels": np.int16(N_CHANNELS),
        "subject": np.int16(subject), "condition": np.array(condition),
        "shift_deg": np.int16(0 if condition == "baseline" else 45),
        "class_names": np.array(class_names, dtype=str),
        "device": np.array("Myo armband"),
        "source": np.array("LibEMG/CIILData ElectrodeShift: "
                           + ", ".join(name for name, _ in present)),
    }


def convert(src: Path, out: Path, subjects=None) -> list[Path]:
    """Convert every subject folder of ``src`` into ``out``; returns the files written."""
    from emtl_stream._atomic import atomic_write

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ConversionError(f"{src} is not a folder (expected LibEMG's ElectrodeShift folder)")
    subject_dirs = sorted((int(m.group(1)), d) for d in src.iterdir()
                          if d.is_dir() and (m := _SUBJECT.match(d.name)))
    if not subject_dirs:
        raise ConversionError(f"{src} has no subject<N> folders; point at the ElectrodeShift "
                              "folder of LibEMG/CIILData")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sid, d in subject_dirs:
        if subjects is not None and sid not in subjects:
            continue
        for condition, folders in (("baseline", [("training", 0)]),
                                   ("shifted", [(f"trial_{b}", b) for b in range(1, 5)])):
            arrays = convert_condition(d, folders, condition, sid)
            if arrays is None:
                continue
            path = out / f"ciil_es_s{sid:02d}_{condition}.npz"
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write(path, lambda fh, b=buf: fh.write(b.getbuffer()))
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="LibEMG's ElectrodeShift folder (subject0, subject1, ...)")
    p.add_argument("out", help="folder to write ciil_es_sNN_{baseline,shifted}.npz into")
    p.add_argument("--subjects", default=None, help="comma-separated subject ids (default all)")
    a = p.parse_args(argv)
    try:
        subjects = {int(s) for s in a.subjects.split(",")} if a.subjects else None
    except ValueError:
        p.error(f"--subjects must be comma-separated integers, got {a.subjects!r}")
    try:
        written = convert(Path(a.src), Path(a.out), subjects)
    except ConversionError as exc:
        print(f"convert_libemg_ciil: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{len(written)} files written to {a.out}; set EMTL_EMG_DATA={a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
