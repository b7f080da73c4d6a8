"""EMG feature kernels over one window (n_samples, n_channels) or a batch of windows.

The public, validating wrapper is :class:`emtl_stream.pipeline.features.FeatureExtractor`.
Here every function trusts its inputs (C-contiguous float64, ``n_samples`` at least
``max(3, ar_order + 1)``).

Feature definitions (x = one channel of a window, n samples, d_i = x_{i+1} - x_i)
--------------------------------------------------------------------------------
``mav``                mean |x_i|
``rms``                sqrt(mean x_i²)
``logvar``             log(var(x) + eps), var with ddof = 0
``wl``                 Σ |d_i|  (waveform length, a sum, not a mean)
``zc``                 #{i : x_i x_{i+1} < 0 and |d_i| >= zc_threshold}
``ssc``                #{i : (x_i - x_{i-1})(x_i - x_{i+1}) > 0 and
                        max(|x_i - x_{i-1}|, |x_i - x_{i+1}|) >= ssc_threshold}
                       (thresholds in the raw units of x, not squared units)
``wamp``               #{i : |d_i| >= wamp_threshold}
``hjorth_activity``    var(x)
``hjorth_mobility``    sqrt(var(d) / var(x)); 0 for a constant window
``hjorth_complexity``  mobility(d) / mobility(x); 0 when either is 0
``ar``                 ``ar_order`` Yule-Walker coefficients a_1..a_p of the model
                       x_t = Σ_k a_k x_{t-k} + e_t on the mean-removed window, from the
                       biased autocorrelation r_k = Σ_t x_t x_{t+k} / n, solved by
                       Levinson-Durbin; all zero for a constant window; coefficients
                       past a perfect fit (prediction error 0) stay 0
``mnf``, ``mdf``       mean / median frequency (Hz) of the one-sided boxcar periodogram
                       of the mean-removed window (bins k = 0..n//2 at k fs / n, all bins
                       except DC and Nyquist doubled, as ``scipy.signal.periodogram``);
                       mdf is the lowest bin where the cumulative power reaches half the
                       total (no interpolation); both 0 for a constant window. The DFT is
                       direct, O(n²) per channel: cheap at 40 samples, not at thousands
``log_mav``, ``log_wl``  log(mav + eps), log(wl + eps)

Non-finite input: a window with any NaN/inf sample gives ``False`` and an output of
NaN; no feature of a bad window is ever computed from the finite part.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import kernel

#: Feature names in kernel code order (the code of a name is its index).
FEATURE_CODES = (
    "mav", "rms", "logvar", "wl", "zc", "ssc", "wamp",
    "hjorth_activity", "hjorth_mobility", "hjorth_complexity", "ar",
    "mnf", "mdf", "log_mav", "log_wl",
)

#: Layout of the ``params`` vector every kernel takes.
P_ZC, P_SSC, P_WAMP, P_FS, P_EPS, P_AR_ORDER = 0, 1, 2, 3, 4, 5
N_PARAMS = 6

_AR = 10


@kernel()
def _mean(x, c):
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        s += x[i, c]
    return s / n


@kernel()
def _var(x, c):
    n = x.shape[0]
    m = _mean(x, c)
    s = 0.0
    for i in range(n):
        d = x[i, c] - m
        s += d * d
    return s / n


@kernel()
def _diff_var(x, c, order):
    """Variance (ddof 0) of the ``order``-th difference (1 or 2) of channel c."""
    n = x.shape[0] - order
    s = 0.0
    for i in range(n):
        if order == 1:
            s += x[i + 1, c] - x[i, c]
        else:
            s += x[i + 2, c] - 2.0 * x[i + 1, c] + x[i, c]
    m = s / n
    q = 0.0
    for i in range(n):
        if order == 1:
            d = x[i + 1, c] - x[i, c] - m
        else:
            d = x[i + 2, c] - 2.0 * x[i + 1, c] + x[i, c] - m
        q += d * d
    return q / n


@kernel()
def _mav(x, c):
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        s += abs(x[i, c])
    return s / n


@kernel()
def _rms(x, c):
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        s += x[i, c] * x[i, c]
    return math.sqrt(s / n)


@kernel()
def _wl(x, c):
    s = 0.0
    for i in range(x.shape[0] - 1):
        s += abs(x[i + 1, c] - x[i, c])
    return s


@kernel()
def _zc(x, c, thr):
    k = 0
    for i in range(x.shape[0] - 1):
        a = x[i, c]
        b = x[i + 1, c]
        if a * b < 0.0 and abs(b - a) >= thr:
            k += 1
    return float(k)


@kernel()
def _ssc(x, c, thr):
    k = 0
    for i in range(1, x.shape[0] - 1):
        d1 = x[i, c] - x[i - 1, c]
        d2 = x[i, c] - x[i + 1, c]
        if d1 * d2 > 0.0 and max(abs(d1), abs(d2)) >= thr:
            k += 1
    return float(k)


@kernel()
def _wamp(x, c, thr):
    k = 0
    for i in range(x.shape[0] - 1):
        if abs(x[i + 1, c] - x[i, c]) >= thr:
            k += 1
    return float(k)


@kernel()
def _hjorth(x, c):
    """(activity, mobility, complexity) of channel c."""
    v0 = _var(x, c)
    v1 = _diff_var(x, c, 1)
    v2 = _diff_var(x, c, 2)
    mob = math.sqrt(v1 / v0) if v0 > 0.0 else 0.0
    mob_d = math.sqrt(v2 / v1) if v1 > 0.0 else 0.0
    comp = mob_d / mob if mob > 0.0 else 0.0
    return v0, mob, comp


@kernel()
def _ar(x, c, p, out, o):
    """Yule-Walker AR(p) coefficients of channel c into out[o:o+p] (Levinson-Durbin)."""
    n = x.shape[0]
    m = _mean(x, c)
    r = np.zeros(p + 1)
    for k in range(p + 1):
        s = 0.0
        for t in range(n - k):
            s += (x[t, c] - m) * (x[t + k, c] - m)
        r[k] = s / n
    a = np.zeros(p)
    prev = np.zeros(p)
    err = r[0]
    for k in range(1, p + 1):
        if err <= 0.0:
            break  # constant window, or an exact fit at a lower order: the rest stays 0
        acc = r[k]
        for j in range(1, k):
            acc -= a[j - 1] * r[k - j]
        refl = acc / err
        for j in range(k - 1):
            prev[j] = a[j]
        for j in range(1, k):
            a[j - 1] = prev[j - 1] - refl * prev[k - j - 1]
        a[k - 1] = refl
        err *= 1.0 - refl * refl
    for k in range(p):
        out[o + k] = a[k]


@kernel()
def _spectrum(x, c, power):
    """One-sided boxcar periodogram of mean-removed channel c into power[0..n//2]."""
    n = x.shape[0]
    m = _mean(x, c)
    nb = n // 2 + 1
    # cos/sin table indexed by (k t) mod n: n trig calls instead of n²/2.
    cos_t = np.empty(n)
    sin_t = np.empty(n)
    for j in range(n):
        ang = 2.0 * math.pi * j / n
        cos_t[j] = math.cos(ang)
        sin_t[j] = math.sin(ang)
    for k in range(nb):
        re = 0.0
        im = 0.0
        idx = 0
        for t in range(n):
            v = x[t, c] - m
            re += v * cos_t[idx]
            im -= v * sin_t[idx]
            idx += k
            if idx >= n:
                idx -= n
        pk = re * re + im * im
        if k != 0 and not (n % 2 == 0 and k == n // 2):
            pk *= 2.0
        power[k] = pk


@kernel()
def _mnf_mdf(x, c, fs):
    n = x.shape[0]
    nb = n // 2 + 1
    power = np.empty(nb)
    _spectrum(x, c, power)
    total = 0.0
    weighted = 0.0
    for k in range(nb):
        total += power[k]
        weighted += power[k] * (k * fs / n)
    if not total > 0.0:
        return 0.0, 0.0
    half = 0.5 * total
    cum = 0.0
    mdf = (nb - 1) * fs / n
    for k in range(nb):
        cum += power[k]
        if cum >= half:
            mdf = k * fs / n
            break
    return weighted / total, mdf


@kernel()
def features_per_channel(codes, ar_order):
    """Number of output values per channel for ``codes`` (``ar`` counts ``ar_order``)."""
    w = 0
    for j in range(codes.shape[0]):
        w += ar_order if codes[j] == _AR else 1
    return w


@kernel()
def _window_impl(x, codes, params, out):
    n, ch = x.shape
    for i in range(n):
        for c in range(ch):
            if not math.isfinite(x[i, c]):
                for q in range(out.shape[0]):
                    out[q] = np.nan
                return False
    zc_thr = params[P_ZC]
    ssc_thr = params[P_SSC]
    wamp_thr = params[P_WAMP]
    fs = params[P_FS]
    eps = params[P_EPS]
    p = int(params[P_AR_ORDER])
    fpc = features_per_channel(codes, p)
    for c in range(ch):
        o = c * fpc
        for j in range(codes.shape[0]):
            code = codes[j]
            if code == 0:
                out[o] = _mav(x, c)
            elif code == 1:
                out[o] = _rms(x, c)
            elif code == 2:
                out[o] = math.log(_var(x, c) + eps)
            elif code == 3:
                out[o] = _wl(x, c)
            elif code == 4:
                out[o] = _zc(x, c, zc_thr)
            elif code == 5:
                out[o] = _ssc(x, c, ssc_thr)
            elif code == 6:
                out[o] = _wamp(x, c, wamp_thr)
            elif code == 7:
                out[o] = _var(x, c)
            elif code == 8:
                out[o] = _hjorth(x, c)[1]
            elif code == 9:
                out[o] = _hjorth(x, c)[2]
            elif code == _AR:
                _ar(x, c, p, out, o)
                o += p
                continue
            elif code == 11:
                out[o] = _mnf_mdf(x, c, fs)[0]
            elif code == 12:
                out[o] = _mnf_mdf(x, c, fs)[1]
            elif code == 13:
                out[o] = math.log(_mav(x, c) + eps)
            elif code == 14:
                out[o] = math.log(_wl(x, c) + eps)
            else:
                out[o] = np.nan  # unknown code: the wrapper never sends one
            o += 1
    return True


@kernel("boolean(float64[:, ::1], int64[::1], float64[::1], float64[::1])")
def window_features(x, codes, params, out):
    """Features of one window, channel-major, written into ``out``.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_channels)
    codes : ndarray of shape (n_codes,) int64
        Indices into :data:`FEATURE_CODES`, in output order within a channel.
    params : ndarray of shape (N_PARAMS,)
        zc, ssc and wamp thresholds, fs (Hz), log eps, AR order.
    out : ndarray of shape (n_channels * features_per_channel,)
        Channel-major: all features of channel 0, then channel 1, ...

    Returns
    -------
    finite : bool
        False (and ``out`` all NaN) when the window holds any NaN or inf.
    """
    return _window_impl(x, codes, params, out)


@kernel("void(float64[:, :, ::1], int64[::1], float64[::1], float64[:, ::1], boolean[::1])")
def batch_features(X, codes, params, out, finite):
    """:func:`window_features` for every window of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_windows, n_samples, n_channels)
    codes, params : as for :func:`window_features`
    out : ndarray of shape (n_windows, n_features)
        Rows of non-finite windows are NaN.
    finite : ndarray of shape (n_windows,) bool
    """
    for w in range(X.shape[0]):
        finite[w] = _window_impl(X[w], codes, params, out[w])
