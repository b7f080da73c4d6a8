"""Record a live LSL EMG stream and its Markers stream into a labelled recording.

The labels come from string markers (a replayer's class changes, a stimulus
program's cues, the daemon's prompt outlet): each marker labels the samples from
its timestamp until the next marker; ``none``, ``stop`` and empty markers unlabel,
``fit`` is ignored. Samples before the first marker carry no label and are
left out of the file, so every sample written is labelled.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import StreamError, StreamLost
from .lsl_inlet import EMGInlet, MarkerInlet
from .recordings import Recording, save_csv, save_recording

_UNLABEL = ("", "none", "stop")
_IGNORE = ("fit",)


def markers_to_labels(markers, stamps: np.ndarray):
    """Per-sample labels from ``(text, timestamp)`` markers.

    Parameters
    ----------
    markers : sequence of (str, float)
    stamps : ndarray of shape (n_samples,)
        Sample timestamps (same clock as the markers).

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
        Class index, ``-1`` before the first marker and after an unlabelling one.
    class_names : list of str
        In order of first appearance.
    """
    names: list[str] = []
    times, codes = [], []
    for text, t in sorted(markers, key=lambda m: m[1]):
        word = str(text).strip()
        if word.lower() in _IGNORE:
            continue
        if word.lower() in _UNLABEL:
            code = -1
        else:
            if word not in names:
                names.append(word)
            code = names.index(word)
        times.append(float(t))
        codes.append(code)
    stamps = np.asarray(stamps, dtype=np.float64)
    if not times:
        return np.full(stamps.shape, -1, np.int64), names
    idx = np.searchsorted(np.asarray(times), stamps, side="right") - 1
    labels = np.where(idx >= 0, np.asarray(codes, np.int64)[np.clip(idx, 0, None)], -1)
    return labels.astype(np.int64), names


def markers_in_force_from(markers, t0: float) -> list[tuple[str, float]]:
    """Return the markers that label samples from ``t0`` on, in time order.

    The marker in force at ``t0`` is kept although it is stamped before it: it
    labels the first samples. (It rarely shares the first sample's timestamp
    exactly, since samples and markers come through separate clock corrections.)

    Parameters
    ----------
    markers : sequence of (str, float)
    t0 : float
        Timestamp of the first sample kept.

    Returns
    -------
    list of (str, float)
    """
    ordered = sorted(markers, key=lambda m: m[1])
    times = np.asarray([m[1] for m in ordered], np.float64)
    first = max(int(np.searchsorted(times, t0, side="right")) - 1, 0)
    return ordered[first:]


def record_streams(name: str | None, source_id: str | None, stype: str | None,
                   markers: str | None, seconds: float, out, *, resolve_timeout: float = 10.0,
                   progress: Callable[[float, int, str | None], None] | None = None,
                   announce: Callable[[str], None] | None = None) -> Recording:
    """Record ``seconds`` of signal (counted in samples) and write ``out`` atomically.

    Parameters
    ----------
    name, source_id, stype : str, optional
        The EMG stream to resolve (at least one of name and source_id).
    markers : str, optional
        Name of the Markers stream with the labels; ``None`` records unlabelled.
    seconds : float
        Signal length to record.
    out : path-like
        ``.npz`` (the shared layout that ``train`` reads), ``.xdf`` or ``.csv``.
    resolve_timeout : float
        Seconds to wait for each stream.
    progress : callable, optional
        ``progress(seconds_recorded, n_markers, current_label)``, after every pull.
    announce : callable, optional
        Receives one line of text when the streams are found.

    Returns
    -------
    Recording
        What was written (labelled samples only when ``markers`` is given).

    Raises
    ------
    StreamNotFound
        A stream did not appear within ``resolve_timeout``.
    StreamLost
        The EMG stream stopped delivering before ``seconds`` were recorded.
    StreamError
        ``markers`` was given but no marker arrived.
    """
    out = Path(out)
    inlet = EMGInlet(name=name, stype=stype, source_id=source_id,
                     resolve_timeout=resolve_timeout, max_buflen_s=10, lost_after_s=5.0)
    marker_inlet = None
    try:
        desc = inlet.connect()
        if markers:
            marker_inlet = MarkerInlet(markers, resolve_timeout=resolve_timeout, retry_s=0.5)
            marker_inlet.poll()
            if not marker_inlet.connected:
                raise StreamError(f"no LSL Markers stream named {markers!r} within "
                                  f"{resolve_timeout:g} s; name the label stream with "
                                  "--markers NAME, or record unlabelled with --markers none")
        if announce is not None:
            announce(f"recording {desc.name!r} ({desc.n_channels} ch @ {desc.rate:g} Hz)"
                     + (f" labelled by markers {markers!r}" if markers else " unlabelled")
                     + f" for {seconds:g} s")
        want = int(math.ceil(seconds * desc.rate))
        emg = np.empty((want, desc.n_channels), np.float64)
        stamps = np.empty(want, np.float64)
        got = 0
        marks: list[tuple[str, float]] = []
        deadline = time.monotonic() + seconds * 1.5 + 10.0
        while got < want:
            samples, ts = inlet.pull(timeout=0.1)
            n = min(len(ts), want - got)
            if n:
                emg[got:got + n] = samples[:n]
                stamps[got:got + n] = ts[:n]
                got += n
            if marker_inlet is not None:
                marks.extend(marker_inlet.poll())
            if progress is not None:
                progress(got / desc.rate, len(marks), marks[-1][0] if marks else None)
            if time.monotonic() > deadline or (got and not inlet.connected):
                raise StreamLost(f"stream {desc.name!r} stopped delivering after "
                                 f"{got / desc.rate:.1f} of {seconds:g} s; nothing written")
        if marker_inlet is not None:
            # markers stamped inside the recording may arrive a moment after its samples
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                marks.extend(marker_inlet.poll())
                time.sleep(0.05)
    finally:
        inlet.close()
        if marker_inlet is not None:
            marker_inlet.close()
    labels = class_names = None
    keep = slice(None)
    if markers:
        labels, class_names = markers_to_labels(marks, stamps)
        labelled = np.flatnonzero(labels >= 0)
        if not labelled.size:
            raise StreamError(f"no marker arrived on {markers!r} during the {seconds:g} s "
                              "recording: nothing to label the samples with; nothing written")
        keep = slice(int(labelled[0]), None)
    rec = Recording(emg=emg[keep], fs=desc.rate,
                    labels=None if labels is None else labels[keep], class_names=class_names,
                    channel_names=[c or f"EMG{i + 1}" for i, c in enumerate(desc.channel_labels)]
                    if any(desc.channel_labels) else None,
                    meta={"timestamps": stamps[keep], "stream_name": desc.name})
    suffix = out.suffix.lower()
    if suffix == ".npz":
        save_recording(out, rec)
    elif suffix == ".csv":
        save_csv(out, rec, timestamps=stamps[keep])
    elif suffix == ".xdf":
        from .xdf_write import save_xdf

        save_xdf(out, rec, stamps[keep], markers_in_force_from(marks, stamps[keep][0]),
                 stream_name=desc.name, markers_name=markers or "")
    else:
        raise ValueError(f"record writes .npz, .xdf or .csv, got {out}")
    return rec
