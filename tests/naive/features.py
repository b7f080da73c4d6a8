"""Plain-numpy/scipy twins of the EMG feature kernels, one channel at a time.

Written from the definitions in ``emtl_stream/kernels/features.py``'s docstring, with
whole-array numpy operations instead of loops, scipy's Toeplitz solver for the AR
model and ``scipy.signal.periodogram`` for the spectrum, so they share no code path
with the kernels.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_toeplitz
from scipy.signal import periodogram


def mav(x):
    return np.mean(np.abs(x))


def rms(x):
    return np.sqrt(np.mean(x**2))


def logvar(x, eps):
    return np.log(np.var(x) + eps)


def wl(x):
    return np.sum(np.abs(np.diff(x)))


def zc(x, thr):
    d = np.diff(x)
    return float(np.count_nonzero((x[:-1] * x[1:] < 0) & (np.abs(d) >= thr)))


def ssc(x, thr):
    left = x[1:-1] - x[:-2]
    right = x[1:-1] - x[2:]
    peak = left * right > 0
    big = np.maximum(np.abs(left), np.abs(right)) >= thr
    return float(np.count_nonzero(peak & big))


def wamp(x, thr):
    return float(np.count_nonzero(np.abs(np.diff(x)) >= thr))


def hjorth(x):
    v0, v1, v2 = np.var(x), np.var(np.diff(x)), np.var(np.diff(x, 2))
    mob = np.sqrt(v1 / v0) if v0 > 0 else 0.0
    mob_d = np.sqrt(v2 / v1) if v1 > 0 else 0.0
    comp = mob_d / mob if mob > 0 else 0.0
    return v0, mob, comp


def ar_yule_walker(x, p):
    """Yule-Walker AR(p) through scipy's Levinson Toeplitz solver."""
    xc = x - x.mean()
    n = len(x)
    r = np.array([xc[: n - k] @ xc[k:] / n for k in range(p + 1)])
    if r[0] == 0:
        return np.zeros(p)
    return solve_toeplitz((r[:p], r[:p]), r[1 : p + 1])


def ar_least_squares(x, p):
    """AR(p) by ordinary least squares on the mean-removed window (a second estimator)."""
    xc = x - x.mean()
    A = np.column_stack([xc[p - k : len(x) - k] for k in range(1, p + 1)])
    return np.linalg.lstsq(A, xc[p:], rcond=None)[0]


def mnf_mdf(x, fs):
    f, P = periodogram(x, fs=fs, window="boxcar", detrend="constant", scaling="spectrum")
    total = P.sum()
    if not total > 0:
        return 0.0, 0.0
    mnf = (f * P).sum() / total
    mdf = f[np.searchsorted(np.cumsum(P), 0.5 * total)]
    return mnf, mdf


def channel_features(x, name, *, zc_thr=0.0, ssc_thr=0.0, wamp_thr=10.0, fs=200.0,
                     eps=1e-8, ar_order=4):
    """The values of feature ``name`` for one channel ``x`` (list, AR gives ar_order)."""
    if name == "mav":
        return [mav(x)]
    if name == "rms":
        return [rms(x)]
    if name == "logvar":
        return [logvar(x, eps)]
    if name == "wl":
        return [wl(x)]
    if name == "zc":
        return [zc(x, zc_thr)]
    if name == "ssc":
        return [ssc(x, ssc_thr)]
    if name == "wamp":
        return [wamp(x, wamp_thr)]
    if name == "hjorth_activity":
        return [hjorth(x)[0]]
    if name == "hjorth_mobility":
        return [hjorth(x)[1]]
    if name == "hjorth_complexity":
        return [hjorth(x)[2]]
    if name == "ar":
        return list(ar_yule_walker(x, ar_order))
    if name == "mnf":
        return [mnf_mdf(x, fs)[0]]
    if name == "mdf":
        return [mnf_mdf(x, fs)[1]]
    if name == "log_mav":
        return [np.log(mav(x) + eps)]
    if name == "log_wl":
        return [np.log(wl(x) + eps)]
    raise KeyError(name)


def window_features(window, names, **kw):
    """Channel-major feature vector of ``window`` (n_samples, n_channels), or None if not finite."""
    if not np.isfinite(window).all():
        return None
    out = []
    for c in range(window.shape[1]):
        for name in names:
            out.extend(channel_features(window[:, c], name, **kw))
    return np.array(out, dtype=float)


# ----------------------------------------------------------------- Hudgins-style sets
# The data README's recipe, shared by every test that needs features computed without
# the package: written with whole-array numpy, per window (n_samples, n_channels).


def mav_wl(w):
    """Feature-major [MAV of every channel, then WL of every channel] of one window."""
    w = np.asarray(w, dtype=np.float64)
    return np.r_[np.abs(w).mean(0), np.abs(np.diff(w, axis=0)).sum(0)]


def mav_wl_windows(x, win, step):
    """:func:`mav_wl` of the windows ``x[a:a + win]``, a = 0, step, ...; shape (n_windows, 2 ch)."""
    return np.array([mav_wl(x[a:a + win]) for a in range(0, len(x) - win + 1, step)])


def hudgins(w):
    """Channel-major (MAV, WL, ZC, SSC) of one window with zero thresholds (4 ch values)."""
    w = np.asarray(w, dtype=np.float64)
    d = np.diff(w, axis=0)
    feats = [np.abs(w).mean(0), np.abs(d).sum(0), (w[:-1] * w[1:] < 0).sum(0),
             (d[:-1] * d[1:] < 0).sum(0)]
    return np.stack(feats, 1).ravel()
