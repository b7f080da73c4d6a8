"""Reading and writing EMG recordings: the shared ``.npz`` format, ``.xdf`` and ``.csv``.

Every reader returns a :class:`Recording`; errors name the file, what is wrong and
what the reader expected. ``.npz`` files are opened with ``allow_pickle=False``
(object arrays are refused) and written atomically (temporary file in the same
folder, ``fsync``, ``os.replace``), so a crash never leaves half a file behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._checks import ensure_float
from .._atomic import atomic_write

SUFFIXES = (".npz", ".xdf", ".csv")
# Keys of the shared format that become Recording fields rather than meta.
_FIELD_KEYS = {"emg", "fs", "label", "class_names", "seg_start", "seg_len", "channel_names"}


@dataclass
class Recording:
    """A multichannel EMG recording with optional per-sample labels.

    Parameters
    ----------
    emg : ndarray of shape (n_samples, n_channels), float32 or float64
    fs : float
        Sampling rate in Hz.
    labels : ndarray of shape (n_samples,), int, optional
        Class index of each sample (``-1``: unlabelled).
    class_names : list of str, optional
        Name of each class index.
    seg_start, seg_len : ndarray of shape (n_segments,), int, optional
        Segments inside which windows may be cut (the shared format's held gestures).
    meta : dict
        Everything else in the file (arrays or scalars), e.g. ``rep``, ``subject``.
    channel_names : list of str, optional
    """

    emg: np.ndarray
    fs: float
    labels: np.ndarray | None = None
    class_names: list | None = None
    seg_start: np.ndarray | None = None
    seg_len: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    channel_names: list | None = None

    def __post_init__(self):
        self.validate()

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return int(self.emg.shape[1])

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(self.emg.shape[0])

    def validate(self, where: str = "recording") -> None:
        """Check shapes and types; ``ValueError`` naming ``where`` and the problem.

        Parameters
        ----------
        where : str
            Prefix of the error message (the file, for a loaded recording).
        """
        emg = np.asarray(self.emg)
        if emg.ndim != 2 or emg.shape[1] < 1:
            raise ValueError(f"{where}: emg must be 2-D (n_samples, n_channels), got shape "
                             f"{emg.shape}.")
        if not np.issubdtype(emg.dtype, np.number) or np.issubdtype(emg.dtype, np.complexfloating):
            raise ValueError(f"{where}: emg must be real numbers, got dtype {emg.dtype}.")
        if not np.issubdtype(emg.dtype, np.floating):
            emg = emg.astype(np.float64)
        self.emg = emg
        try:
            self.fs = ensure_float(float(self.fs), "fs", minimum=0.0, strict_min=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: sampling rate {exc}") from None
        n = emg.shape[0]
        if self.labels is not None:
            lab = np.asarray(self.labels)
            if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
                raise ValueError(f"{where}: labels must be integers of shape ({n},), got "
                                 f"{lab.dtype} {lab.shape}.")
            self.labels = lab
            if self.class_names is not None and lab.size and lab.max() >= len(self.class_names):
                raise ValueError(f"{where}: label {int(lab.max())} has no entry in class_names "
                                 f"({len(self.class_names)} names).")
        if self.class_names is not None:
            self.class_names = [str(c) for c in np.asarray(self.class_names).tolist()]
        if (self.seg_start is None) != (self.seg_len is None):
            raise ValueError(f"{where}: give both seg_start and seg_len or neither.")
        if self.seg_start is not None:
            s = np.asarray(self.seg_start).astype(np.int64)
            ln = np.asarray(self.seg_len).astype(np.int64)
            if s.shape != ln.shape or s.ndim != 1:
                raise ValueError(f"{where}: seg_start and seg_len must be 1-D of equal length, "
                                 f"got {s.shape} and {ln.shape}.")
            if s.size and (s.min() < 0 or ln.min() < 0 or (s + ln).max() > n):
                raise ValueError(f"{where}: a segment lies outside the {n} samples.")
            self.seg_start, self.seg_len = s, ln
        if self.channel_names is not None:
            self.channel_names = [str(c) for c in self.channel_names]
            if len(self.channel_names) != emg.shape[1]:
                raise ValueError(f"{where}: {len(self.channel_names)} channel names for "
                                 f"{emg.shape[1]} channels.")

    def digest(self) -> str:
        """Short content hash (samples and rate): a stable id for replayed streams."""
        h = hashlib.sha1(np.ascontiguousarray(self.emg).tobytes())
        h.update(repr(float(self.fs)).encode())
        return h.hexdigest()[:12]

    def class_name(self, index: int):
        """Name of class ``index`` (``None`` for ``-1``; the index as text without names).

        Parameters
        ----------
        index : int
            A label value.
        """
        if index < 0:
            return None
        if self.class_names is None:
            return str(int(index))
        return self.class_names[int(index)]


# ---------------------------------------------------------------------- loading
def load_recording(path, *, fs: float | None = None) -> Recording:
    """Read a recording from ``.npz`` (shared format), ``.xdf`` or ``.csv``.

    Parameters
    ----------
    path : str or Path
    fs : float, optional
        Sampling rate for a ``.csv`` without a ``# fs=`` comment line.

    Returns
    -------
    Recording

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Unknown suffix, or the file is malformed (the message says how).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"recording {path}: unknown suffix {suffix!r}; supported: "
                         f"{', '.join(SUFFIXES)}.")
    if not path.is_file():
        raise FileNotFoundError(f"recording {path} does not exist.")
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".xdf":
        return _load_xdf(path)
    return _load_csv(path, fs)


#: What a CIIL electrode-shift session file holds (see the data README).
CIIL_KEYS = ("emg", "fs", "seg_start", "seg_len", "seg_class", "seg_rep", "seg_block",
             "class_names", "subject", "condition")


def load_ciil_session(path) -> dict:
    """Read the arrays of one shared CIIL electrode-shift ``.npz`` session.

    Parameters
    ----------
    path : str or Path
        A ``ciil_es_sNN_{baseline,shifted}.npz`` file (see the data README).

    Returns
    -------
    dict
        Every key of :data:`CIIL_KEYS`: ``emg`` (n_samples, n_channels), ``fs``
        (float), ``seg_start``/``seg_len``/``seg_class``/``seg_rep``/``seg_block``
        (n_segments,) int, ``class_names`` (list of str), ``subject`` (int),
        ``condition`` (str); plus ``name``, the file's name.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a readable ``.npz`` or lacks one of those arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"session {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in CIIL_KEYS if k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"session {path} is not a readable .npz file: {exc}") from exc
    missing = [k for k in CIIL_KEYS if k not in out]
    if missing:
        raise ValueError(f"session {path} lacks {', '.join(missing)}; a CIIL "
                         f"electrode-shift file holds {', '.join(CIIL_KEYS)}.")
    out["fs"] = float(out["fs"])
    out["class_names"] = [str(c) for c in out["class_names"]]
    out["subject"], out["condition"] = int(out["subject"]), str(out["condition"])
    out["name"] = path.name
    return out


def _make(path, **fields) -> Recording:
    """Build a Recording; validation messages name the file."""
    try:
        return Recording(**fields)
    except ValueError as exc:
        raise ValueError(str(exc).replace("recording:", f"recording {path}:", 1)) from None


def _load_npz(path: Path) -> Recording:
    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"recording {path} is not a readable .npz file ({exc}).") from None
    with z:
        keys = list(z.files)
        missing = [k for k in ("emg", "fs") if k not in keys]
        if missing:
            raise ValueError(f"recording {path} lacks {missing}; the shared format needs 'emg' "
                             f"(n_samples, n_channels) and 'fs'; found keys {sorted(keys)}.")
        arrays = {}
        for k in keys:
            try:
                arrays[k] = z[k]
            except ValueError as exc:  # object arrays need pickle, which we refuse
                raise ValueError(f"recording {path}: array {k!r} cannot be read without pickle "
                                 f"({exc}); store plain numeric or string arrays.") from None
    fs = arrays["fs"]
    if np.ndim(fs) != 0:
        raise ValueError(f"recording {path}: 'fs' must be a scalar, got shape {np.shape(fs)}.")
    label = arrays.get("label")
    meta = {}
    for k, v in arrays.items():
        if k not in _FIELD_KEYS:
            meta[k] = v.item() if v.ndim == 0 else v
    names = arrays.get("channel_names")
    return _make(
        path, emg=arrays["emg"], fs=float(fs),
        labels=None if label is None else label.astype(np.int64, copy=False),
        class_names=None if "class_names" not in arrays else arrays["class_names"].tolist(),
        seg_start=arrays.get("seg_start"), seg_len=arrays.get("seg_len"), meta=meta,
        channel_names=None if names is None else names.tolist(),
    )


def _load_xdf(path: Path) -> Recording:
    import pyxdf

    try:
        streams, _header = pyxdf.load_xdf(str(path), synchronize_clocks=True,
                                          dejitter_timestamps=False)
    except Exception as exc:  # pyxdf raises many types on malformed input
        raise ValueError(f"recording {path} is not a readable XDF file ({exc}).") from None

    def stype(s):
        return str(s["info"].get("type", [""])[0]).lower()

    emg = [s for s in streams if stype(s) == "emg"]
    if not emg:
        found = [(s["info"].get("name", ["?"])[0], stype(s)) for s in streams]
        raise ValueError(f"recording {path} has no stream of type 'EMG'; streams found "
                         f"(name, type): {found}.")
    s = emg[0]
    data = np.asarray(s["time_series"])
    if data.ndim != 2 or data.shape[0] == 0 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"recording {path}: the EMG stream holds no numeric samples "
                         f"(shape {data.shape}, dtype {data.dtype}).")
    stamps = np.asarray(s["time_stamps"], dtype=np.float64)
    fs = float(s["info"]["nominal_srate"][0])
    if fs <= 0:
        fs = float(s["info"].get("effective_srate", 0.0) or 0.0)
    if fs <= 0:
        raise ValueError(f"recording {path}: the EMG stream has no sampling rate.")
    channel_names = _xdf_channel_labels(s["info"], data.shape[1])
    labels = class_names = None
    markers = [m for m in streams if stype(m) == "markers"]
    if markers:
        labels, class_names = _markers_to_labels(markers[0], stamps)
    meta = {"timestamps": stamps, "stream_name": s["info"]["name"][0]}
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)
    return _make(path, emg=data, fs=fs, labels=labels, class_names=class_names, meta=meta,
                 channel_names=channel_names)


def _xdf_channel_labels(info: dict, n: int):
    try:
        chans = info["desc"][0]["channels"][0]["channel"]
        names = [c["label"][0] for c in chans]
    except (KeyError, IndexError, TypeError):
        return None
    return names if len(names) == n else None


def _markers_to_labels(stream: dict, stamps: np.ndarray):
    """Derive per-sample labels from a marker stream.

    Each marker holds until the next; samples before the first marker are ``-1``.
    Class order = first appearance.
    """
    values = [str(v[0]) for v in stream["time_series"]]
    times = np.asarray(stream["time_stamps"], dtype=np.float64)
    order = np.argsort(times, kind="stable")
    values = [values[i] for i in order]
    times = times[order]
    names: list[str] = []
    for v in values:
        if v not in names:
            names.append(v)
    codes = np.array([names.index(v) for v in values], dtype=np.int64)
    idx = np.searchsorted(times, stamps, side="right") - 1
    labels = np.where(idx >= 0, codes[np.clip(idx, 0, None)] if codes.size else -1, -1)
    return labels.astype(np.int64), names


def _load_csv(path: Path, fs: float | None) -> Recording:
    comments: dict[str, str] = {}
    rows = []
    header = None
    with open(path, newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                body = stripped[1:].strip()
                if "=" in body:
                    k, v = body.split("=", 1)
                    comments[k.strip().lower()] = v.strip()
                continue
            cells = next(csv.reader([stripped]))
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) != len(header):
                raise ValueError(f"recording {path}, line {lineno}: {len(cells)} values for "
                                 f"{len(header)} columns.")
            rows.append(cells)
    if header is None:
        raise ValueError(f"recording {path} is empty; expected a header row of channel names.")
    lower = [h.lower() for h in header]
    label_col = lower.index("label") if "label" in lower else None
    ts_col = lower.index("timestamp") if "timestamp" in lower else None
    chan_cols = [i for i in range(len(header)) if i not in (label_col, ts_col)]
    if not chan_cols:
        raise ValueError(f"recording {path} has no channel columns (header {header}).")
    if fs is None and "fs" in comments:
        try:
            fs = float(comments["fs"])
        except ValueError:
            raise ValueError(f"recording {path}: '# fs={comments['fs']}' is not a "
                             "number.") from None
    if fs is None:
        raise ValueError(f"recording {path}: no sampling rate; add a '# fs=1000' line or pass "
                         "fs=... to load_recording.")
    try:
        emg = np.array([[float(r[i]) for i in chan_cols] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"recording {path}: a channel value is not a number ({exc}).") from None
    emg = emg.reshape(len(rows), len(chan_cols))
    labels = class_names = None
    if "class_names" in comments:
        class_names = [c.strip() for c in comments["class_names"].split(",")]
    if label_col is not None:
        raw = [r[label_col].strip() for r in rows]
        try:
            labels = np.array([int(v) for v in raw], dtype=np.int64)
        except ValueError:
            names = list(class_names or [])
            for v in raw:
                if v not in names:
                    names.append(v)
            labels = np.array([names.index(v) for v in raw], dtype=np.int64)
            class_names = names
    meta = {}
    if ts_col is not None:
        meta["timestamps"] = np.array([float(r[ts_col]) for r in rows])
    return _make(path, emg=emg, fs=fs, labels=labels, class_names=class_names, meta=meta,
                 channel_names=[header[i] for i in chan_cols])


# ---------------------------------------------------------------------- writing
def save_recording(path, rec: Recording) -> None:
    """Write ``rec`` as a compressed ``.npz`` in the shared format, atomically.

    Parameters
    ----------
    path : str or Path
        Destination; must end in ``.npz``.
    rec : Recording
        Its ``meta`` values must be numbers, strings or numeric/string arrays.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"save_recording writes .npz only, got {path}; use save_csv for .csv.")
    rec.validate()
    arrays = {"emg": rec.emg, "fs": np.float64(rec.fs), "n_channels": np.int16(rec.n_channels)}
    if rec.labels is not None:
        lab = rec.labels
        arrays["label"] = lab.astype(np.int8) if lab.size == 0 or (
            lab.min() >= -128 and lab.max() <= 127) else lab.astype(np.int32)
    if rec.class_names is not None:
        arrays["class_names"] = np.array(rec.class_names, dtype=str)
    if rec.seg_start is not None:
        arrays["seg_start"] = rec.seg_start.astype(np.int32)
        arrays["seg_len"] = rec.seg_len.astype(np.int32)
    if rec.channel_names is not None:
        arrays["channel_names"] = np.array(rec.channel_names, dtype=str)
    for k, v in rec.meta.items():
        if k in arrays or k in _FIELD_KEYS:
            continue
        arr = np.asarray(v)
        if arr.dtype == object:
            raise ValueError(f"save_recording: meta[{k!r}] has object dtype; store numbers, "
                             "strings or plain arrays (no pickle).")
        arrays[k] = arr

    def write(fh):
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        fh.write(buf.getbuffer())

    atomic_write(path, write)


def save_csv(path, rec: Recording, timestamps: np.ndarray | None = None) -> None:
    """Write ``rec`` as ``.csv``, atomically.

    The file holds ``# fs=`` and ``# class_names=`` comments, a header of channel
    names, and optional ``timestamp`` and ``label`` columns.

    Values are written with ``repr`` precision, so a float64 round trip is exact.

    Parameters
    ----------
    path : str or Path
        Destination ``.csv``.
    rec : Recording
        The recording.
    timestamps : ndarray of shape (n_samples,), optional
        Per-sample timestamps, written as a ``timestamp`` column.
    """
    rec.validate()
    names = rec.channel_names or [f"EMG{i + 1}" for i in range(rec.n_channels)]
    lines = [f"# fs={rec.fs!r}"]
    if rec.class_names is not None:
        lines.append("# class_names=" + ",".join(rec.class_names))
    header = (["timestamp"] if timestamps is not None else []) + list(names)
    if rec.labels is not None:
        header.append("label")
    out = io.StringIO()
    out.write("\n".join(lines) + "\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    emg = np.asarray(rec.emg, dtype=np.float64)
    for i in range(rec.n_samples):
        row = ([repr(float(timestamps[i]))] if timestamps is not None else [])
        row += [repr(float(v)) for v in emg[i]]
        if rec.labels is not None:
            row.append(str(int(rec.labels[i])))
        w.writerow(row)
    atomic_write(Path(path), lambda fh: fh.write(out.getvalue().encode()))
