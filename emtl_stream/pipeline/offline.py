"""Windowing and featurisation of whole recordings, with the live pipeline's numbers.

:func:`featurize` filters the whole recording at once (equal to the streaming
filter run chunk by chunk), cuts windows with the same sample counts as
:class:`~emtl_stream.pipeline.features.FeaturePipeline` and computes features with
the same kernel, so a window cut here and the same window cut live give the same
feature vector. Arrays in, arrays out: reading files is :mod:`emtl_stream.io`'s.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .._checks import ensure_int
from ..logs import logger
from .features import FeatureExtractor
from .windowing import ms_to_samples


def _segments(n_total: int, seg_start, seg_len):
    if seg_start is None and seg_len is None:
        return np.array([0], dtype=np.int64), np.array([n_total], dtype=np.int64)
    if seg_start is None or seg_len is None:
        raise ValueError("give both seg_start and seg_len, or neither (one segment).")
    s = np.asarray(seg_start, dtype=np.int64).reshape(-1)
    n = np.asarray(seg_len, dtype=np.int64).reshape(-1)
    if s.shape != n.shape:
        raise ValueError(f"seg_start ({s.shape[0]}) and seg_len ({n.shape[0]}) differ in length.")
    if (s < 0).any() or (n < 0).any() or (s + n > n_total).any():
        bad = int(np.flatnonzero((s < 0) | (n < 0) | (s + n > n_total))[0])
        raise ValueError(f"segment {bad} [{s[bad]}, {s[bad] + n[bad]}) lies outside the "
                         f"recording of {n_total} samples.")
    return s, n


def segment_windows(emg, seg_start, seg_len, window: int, step: int):
    """Cut windows strictly inside segments.

    Parameters
    ----------
    emg : array-like of shape (n_samples, n_channels)
    seg_start, seg_len : array-like of shape (n_segments,) or None
        First sample and length of each segment; None for one segment (the whole array).
    window, step : int
        Window length and hop in samples. In each segment windows start at offsets
        0, step, 2 step, ... while they fit; a segment shorter than ``window`` gives none.

    Returns
    -------
    windows : ndarray of shape (n_windows, window, n_channels) float64
    seg_index : ndarray of shape (n_windows,) int64
        Segment of each window.
    offset_in_segment : ndarray of shape (n_windows,) int64
        Start of each window relative to its segment's first sample.
    """
    x = np.asarray(emg)
    if x.ndim != 2:
        raise ValueError(f"emg must be 2-D (n_samples, n_channels), got shape {x.shape}.")
    window = ensure_int(window, "window", minimum=1)
    step = ensure_int(step, "step", minimum=1)
    s, n = _segments(x.shape[0], seg_start, seg_len)
    seg_idx, offs = [], []
    for k in range(len(s)):
        o = np.arange(0, n[k] - window + 1, step, dtype=np.int64)
        seg_idx.append(np.full(o.shape, k, dtype=np.int64))
        offs.append(o)
    seg_index = np.concatenate(seg_idx) if seg_idx else np.zeros(0, np.int64)
    offset = np.concatenate(offs) if offs else np.zeros(0, np.int64)
    starts = s[seg_index] + offset
    windows = np.empty((len(starts), window, x.shape[1]), dtype=np.float64)
    for i, a in enumerate(starts):
        windows[i] = x[a:a + window]
    return windows, seg_index, offset


def featurize(emg, fs: float, extractor: FeatureExtractor, window_ms: float, step_ms: float,
              seg_start=None, seg_len=None, filter=None):
    """Feature vectors of every window of a recording.

    Parameters
    ----------
    emg : array-like of shape (n_samples, n_channels)
    fs : float
        Sampling rate (Hz); must equal ``extractor.fs``.
    extractor : FeatureExtractor
    window_ms, step_ms : float
    seg_start, seg_len : array-like of shape (n_segments,), optional
        Windows are cut inside each segment (see :func:`segment_windows`).
    filter : StreamingFilter, optional
        Reset, then run over the whole recording at once before windowing (so
        segment boundaries do not restart it, as in a continuous live stream).

    Returns
    -------
    X : ndarray of shape (n_windows, n_features)
        Windows holding NaN/inf are dropped (logged at WARNING), as live.
    seg_index : ndarray of shape (n_windows,) int64
    offset : ndarray of shape (n_windows,) int64
        Window start in samples from its segment's first sample.
    """
    if float(fs) != extractor.fs:
        raise ValueError(f"fs={fs} Hz differs from the extractor's fs={extractor.fs} Hz.")
    x = np.asarray(emg, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != extractor.n_channels:
        raise ValueError(f"emg must have shape (n_samples, {extractor.n_channels}), "
                         f"got {x.shape}.")
    if filter is not None:
        filter.reset()
        x = filter.process(x)
        filter.reset()
    window = ms_to_samples(window_ms, extractor.fs, "window_ms")
    step = ms_to_samples(step_ms, extractor.fs, "step_ms")
    windows, seg_index, offset = segment_windows(x, seg_start, seg_len, window, step)
    X, finite = extractor.transform_batch(windows)
    if not finite.all():
        logger.warning("dropped %d of %d window(s) holding NaN/inf samples",
                       int((~finite).sum()), len(finite))
        X, seg_index, offset = X[finite], seg_index[finite], offset[finite]
    return X, seg_index, offset


def ciil_features(session: Mapping, extractor: FeatureExtractor, window_ms: float = 200.0,
                  step_ms: float = 50.0) -> dict:
    """Features of one CIIL electrode-shift session, with each window's labels.

    Parameters
    ----------
    session : mapping
        The session's arrays, as :func:`emtl_stream.io.recordings.load_ciil_session`
        reads them from a ``ciil_es_sNN_{baseline,shifted}.npz`` file: ``emg`` of
        shape (n_samples, n_channels), ``fs``, ``seg_start``/``seg_len``/``seg_class``/
        ``seg_rep``/``seg_block`` of shape (n_segments,), ``class_names``, ``subject``,
        ``condition`` and, for error messages, ``name``.
    extractor : FeatureExtractor
        Must match the session's channel count and rate (8 channels, 200 Hz).
    window_ms, step_ms : float
        Window length and hop.

    Returns
    -------
    dict
        ``X`` (n_windows, n_features), ``y`` (n_windows,) int class index, ``rep``
        (n_windows,) repetition, ``block`` (n_windows,), ``seg_index`` (n_windows,),
        ``offset_s`` (n_windows,) time of the window's end since its segment's start
        (s), ``class_names`` (list of str), ``subject`` (int), ``condition`` (str).
    """
    emg = np.asarray(session["emg"])
    fs = float(session["fs"])
    if emg.ndim != 2 or emg.shape[1] != extractor.n_channels or fs != extractor.fs:
        raise ValueError(f"{session.get('name', 'the session')} has "
                         f"{emg.shape[1] if emg.ndim == 2 else '?'} channels at {fs} Hz; the "
                         f"extractor expects {extractor.n_channels} at {extractor.fs} Hz.")
    X, seg_index, offset = featurize(emg, fs, extractor, window_ms, step_ms,
                                     session["seg_start"], session["seg_len"])
    window = ms_to_samples(window_ms, fs, "window_ms")
    return {
        "X": X,
        "y": np.asarray(session["seg_class"])[seg_index].astype(np.int64),
        "rep": np.asarray(session["seg_rep"])[seg_index].astype(np.int64),
        "block": np.asarray(session["seg_block"])[seg_index].astype(np.int64),
        "seg_index": seg_index,
        "offset_s": (offset + window) / fs,
        "class_names": [str(c) for c in session["class_names"]],
        "subject": int(session["subject"]),
        "condition": str(session["condition"]),
    }
