"""Contractions of a known strength on the synthetic armband: holds and slow ramps.

:class:`~emtl_stream.sim.synthetic.SyntheticArmband` performs every class at
one fixed activation pattern. :func:`generate_at_level` performs a class at a chosen
fraction of that pattern (the *activation level*, 1 = the generator's default
strength), so a test or a benchmark knows the true contraction strength of every
sample. :func:`ramp_session` and :func:`hold_session` build the two training
protocols compared in docs/speed.md: slow ramps from rest to a strong contraction,
and static holds.

The armband's state (filter memory, random streams, activation lag) carries over
exactly as in :meth:`SyntheticArmband.generate`.
"""

from __future__ import annotations

import numpy as np

from .._checks import ensure_float, ensure_int
from .synthetic import SyntheticArmband


def generate_at_level(armband: SyntheticArmband, n_samples: int, class_, level: float):
    """Generate the next ``n_samples`` samples of ``class_`` at ``level`` x its strength.

    Parameters
    ----------
    armband : SyntheticArmband
    n_samples : int
    class_ : str or int
    level : float
        Activation scale in [0, 2]; the muscles of the class are driven at ``level``
        times the generator's pattern (never below the resting tone).

    Returns
    -------
    ndarray of shape (n_samples, n_channels), float32
    """
    level = ensure_float(level, "level", minimum=0.0, maximum=2.0)
    k = armband.class_index(class_)
    saved = armband.activation
    act = saved.copy()
    act[k] = np.maximum(saved[k] * level, saved[0])
    armband.activation = act
    try:
        return armband.generate(n_samples, k)
    finally:
        armband.activation = saved


def level_session(armband: SyntheticArmband, classes, seconds_per_class: float, levels,
                  chunk_s: float = 0.01):
    """Perform each class in turn, following a given level profile.

    Parameters
    ----------
    armband : SyntheticArmband
    classes : sequence of str or int
    seconds_per_class : float
    levels : callable ``(class_position, n_chunks) -> ndarray (n_chunks,)``
        The level of each ``chunk_s`` piece of the class's segment.
    chunk_s : float
        Seconds per constant-level piece (the level is a staircase at this resolution).

    Returns
    -------
    emg : ndarray of shape (n_samples, n_channels) float32
    label : ndarray of shape (n_samples,) int64
        Class index of each sample.
    level : ndarray of shape (n_samples,) float64
        Commanded activation level of each sample.
    seg_start, seg_len : ndarray of shape (n_classes,) int64
    """
    seconds = ensure_float(seconds_per_class, "seconds_per_class", minimum=0.0, strict_min=True)
    chunk = max(1, int(round(ensure_float(chunk_s, "chunk_s", minimum=0.0, strict_min=True)
                             * armband.fs)))
    n_chunks = ensure_int(max(1, int(round(seconds * armband.fs / chunk))), "n_chunks", 1)
    emg, lab, lev, starts, lens = [], [], [], [], []
    pos = 0
    for i, c in enumerate(classes):
        k = armband.class_index(c)
        prof = np.asarray(levels(i, n_chunks), dtype=np.float64).reshape(-1)
        if prof.shape != (n_chunks,):
            raise ValueError(f"levels returned shape {prof.shape}, expected ({n_chunks},).")
        starts.append(pos)
        for v in prof:
            emg.append(generate_at_level(armband, chunk, k, float(v)))
            lab.append(np.full(chunk, k, dtype=np.int64))
            lev.append(np.full(chunk, v))
        lens.append(chunk * n_chunks)
        pos += chunk * n_chunks
    return (np.concatenate(emg), np.concatenate(lab), np.concatenate(lev),
            np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64))


def ramp_session(armband: SyntheticArmband, classes, seconds_per_class: float = 4.0,
                 low: float = 0.1, high: float = 1.0, chunk_s: float = 0.01):
    """Generate slow linear ramps from ``low`` to ``high`` activation for every class.

    Parameters
    ----------
    armband : SyntheticArmband
        The generator that performs the session.
    classes : sequence of str
        Classes to perform, in order.
    seconds_per_class : float
        Duration of each class's segment.
    low, high : float
        Activation level at the start and at the end of each ramp.
    chunk_s : float
        Generation chunk length (s).

    Returns
    -------
    tuple
        Same returns as :func:`level_session`.
    """
    return level_session(armband, classes, seconds_per_class,
                         lambda i, n: np.linspace(low, high, n), chunk_s)


def hold_session(armband: SyntheticArmband, classes, seconds_per_class: float = 4.0,
                 level: float = 1.0, chunk_s: float = 0.01):
    """Generate static holds at one activation level for every class.

    Parameters
    ----------
    armband : SyntheticArmband
        The generator that performs the session.
    classes : sequence of str
        Classes to perform, in order.
    seconds_per_class : float
        Duration of each class's segment.
    level : float
        Activation level held throughout each segment.
    chunk_s : float
        Generation chunk length (s).

    Returns
    -------
    tuple
        Same returns as :func:`level_session`.
    """
    return level_session(armband, classes, seconds_per_class,
                         lambda i, n: np.full(n, level), chunk_s)
