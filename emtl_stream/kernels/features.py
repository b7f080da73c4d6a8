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
                       a product with cos/sin tables, O(n²) per channel (BLAS):
                       about 15 µs at 8 x 40, 1-2 ms at 64 x 400 samples
``log_mav``, ``log_wl``  log(mav + eps), log(wl + eps)

Non-finite input: a window with any NaN/inf sample gives ``False`` and an output of
NaN; no feature of a bad window is ever computed from the finite part.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import B1, F1, F2, F3, I1, kernel
from .feature_codes import (
    CODE_AR, CODE_HJORTH_ACTIVITY, CODE_HJORTH_COMPLEXITY, CODE_HJORTH_MOBILITY, CODE_LOG_MAV,
    CODE_LOG_WL, CODE_LOGVAR, CODE_MAV, CODE_MDF, CODE_MNF, CODE_RMS, CODE_SSC, CODE_WAMP,
    CODE_WL, CODE_ZC, FEATURE_CODES,
)

__all__ = ["FEATURE_CODES", "N_PARAMS", "batch_features", "features_per_channel",
           "window_features"]

#: Layout of the ``params`` vector every kernel takes.
P_ZC, P_SSC, P_WAMP, P_FS, P_EPS, P_AR_ORDER = 0, 1, 2, 3, 4, 5
N_PARAMS = 6


# The per-channel helpers take one channel as a contiguous 1-D array: the window
# kernel transposes (n_samples, n_channels) into (n_channels, n_samples) once, because
# walking a column of a wide C-ordered window is strided (25x slower at 320 channels).


@kernel()
def _mean(v):
    s = 0.0
    for i in range(v.shape[0]):
        s += v[i]
    return s / v.shape[0]


@kernel()
def _var(v):
    m = _mean(v)
    s = 0.0
    for i in range(v.shape[0]):
        d = v[i] - m
        s += d * d
    return s / v.shape[0]


@kernel()
def _diff_var(v, order):
    """Variance (ddof 0) of the ``order``-th difference (1 or 2) of v."""
    n = v.shape[0] - order
    s = 0.0
    for i in range(n):
        if order == 1:
            s += v[i + 1] - v[i]
        else:
            s += v[i + 2] - 2.0 * v[i + 1] + v[i]
    m = s / n
    q = 0.0
    for i in range(n):
        if order == 1:
            d = v[i + 1] - v[i] - m
        else:
            d = v[i + 2] - 2.0 * v[i + 1] + v[i] - m
        q += d * d
    return q / n


@kernel()
def _mav(v):
    s = 0.0
    for i in range(v.shape[0]):
        s += abs(v[i])
    return s / v.shape[0]


@kernel()
def _rms(v):
    s = 0.0
    for i in range(v.shape[0]):
        s += v[i] * v[i]
    return math.sqrt(s / v.shape[0])


@kernel()
def _wl(v):
    s = 0.0
    for i in range(v.shape[0] - 1):
        s += abs(v[i + 1] - v[i])
    return s


@kernel()
def _zc(v, thr):
    k = 0
    for i in range(v.shape[0] - 1):
        a = v[i]
        b = v[i + 1]
        if a * b < 0.0 and abs(b - a) >= thr:
            k += 1
    return float(k)


@kernel()
def _ssc(v, thr):
    k = 0
    for i in range(1, v.shape[0] - 1):
        d1 = v[i] - v[i - 1]
        d2 = v[i] - v[i + 1]
        if d1 * d2 > 0.0 and max(abs(d1), abs(d2)) >= thr:
            k += 1
    return float(k)


@kernel()
def _wamp(v, thr):
    k = 0
    for i in range(v.shape[0] - 1):
        if abs(v[i + 1] - v[i]) >= thr:
            k += 1
    return float(k)


@kernel()
def _hjorth(v):
    """(activity, mobility, complexity) of v."""
    v0 = _var(v)
    v1 = _diff_var(v, 1)
    v2 = _diff_var(v, 2)
    mob = math.sqrt(v1 / v0) if v0 > 0.0 else 0.0
    mob_d = math.sqrt(v2 / v1) if v1 > 0.0 else 0.0
    comp = mob_d / mob if mob > 0.0 else 0.0
    return v0, mob, comp


@kernel()
def _ar(v, p, out, o):
    """Yule-Walker AR(p) coefficients of v into out[o:o+p] (Levinson-Durbin)."""
    n = v.shape[0]
    m = _mean(v)
    r = np.zeros(p + 1)
    for k in range(p + 1):
        s = 0.0
        for t in range(n - k):
            s += (v[t] - m) * (v[t + k] - m)
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
def _power_all(buf):
    """One-sided boxcar periodograms of the mean-removed rows of ``buf`` (ch, n).

    Returns (ch, n//2 + 1). The DFT is a product with cos/sin tables (entries
    looked up by (k t) mod n: n trig calls per window), so BLAS does the O(n²) part.
    """
    ch, n = buf.shape
    nb = n // 2 + 1
    cos_t = np.empty(n)
    sin_t = np.empty(n)
    for j in range(n):
        ang = 2.0 * math.pi * j / n
        cos_t[j] = math.cos(ang)
        sin_t[j] = math.sin(ang)
    ct = np.empty((n, nb))
    st = np.empty((n, nb))
    for t in range(n):
        idx = 0
        for k in range(nb):
            ct[t, k] = cos_t[idx]
            st[t, k] = sin_t[idx]
            idx += t
            if idx >= n:
                idx -= n
    centred = np.empty((ch, n))
    for c in range(ch):
        m = _mean(buf[c])
        for t in range(n):
            centred[c, t] = buf[c, t] - m
    re = np.dot(centred, ct)
    im = np.dot(centred, st)
    power = np.empty((ch, nb))
    for c in range(ch):
        for k in range(nb):
            pk = re[c, k] * re[c, k] + im[c, k] * im[c, k]
            if k != 0 and not (n % 2 == 0 and k == n // 2):
                pk *= 2.0
            power[c, k] = pk
    return power


@kernel()
def _mnf_mdf(power, n, fs):
    """Mean and median frequency from one periodogram row (n = window length)."""
    nb = power.shape[0]
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
    """Count the output values per channel for ``codes``.

    Parameters
    ----------
    codes : ndarray of shape (n_codes,) int64
        Feature codes (:mod:`emtl_stream.kernels.feature_codes`).
    ar_order : int
        Values contributed by ``ar``; every other feature contributes one.

    Returns
    -------
    int
    """
    w = 0
    for j in range(codes.shape[0]):
        w += ar_order if codes[j] == CODE_AR else 1
    return w


@kernel()
def _window_impl(x, codes, params, out):
    n, ch = x.shape
    # Transpose to channel rows, checking finiteness on the way (one pass over x).
    buf = np.empty((ch, n))
    for i in range(n):
        for c in range(ch):
            val = x[i, c]
            if not math.isfinite(val):
                for q in range(out.shape[0]):
                    out[q] = np.nan
                return False
            buf[c, i] = val
    zc_thr = params[P_ZC]
    ssc_thr = params[P_SSC]
    wamp_thr = params[P_WAMP]
    fs = params[P_FS]
    eps = params[P_EPS]
    p = int(params[P_AR_ORDER])
    fpc = features_per_channel(codes, p)
    spectral = False
    for j in range(codes.shape[0]):
        if codes[j] == CODE_MNF or codes[j] == CODE_MDF:
            spectral = True
    power = _power_all(buf) if spectral else np.empty((1, 1))
    for c in range(ch):
        v = buf[c]
        o = c * fpc
        # mnf/mdf share one spectrum, mobility/complexity one set of variances.
        have_spec = False
        mnf = 0.0
        mdf = 0.0
        have_hj = False
        mob = 0.0
        comp = 0.0
        for j in range(codes.shape[0]):
            code = codes[j]
            if code == CODE_MAV:
                out[o] = _mav(v)
            elif code == CODE_RMS:
                out[o] = _rms(v)
            elif code == CODE_LOGVAR:
                out[o] = math.log(_var(v) + eps)
            elif code == CODE_WL:
                out[o] = _wl(v)
            elif code == CODE_ZC:
                out[o] = _zc(v, zc_thr)
            elif code == CODE_SSC:
                out[o] = _ssc(v, ssc_thr)
            elif code == CODE_WAMP:
                out[o] = _wamp(v, wamp_thr)
            elif code == CODE_HJORTH_ACTIVITY:
                out[o] = _var(v)
            elif code == CODE_HJORTH_MOBILITY or code == CODE_HJORTH_COMPLEXITY:
                if not have_hj:
                    _, mob, comp = _hjorth(v)
                    have_hj = True
                out[o] = mob if code == CODE_HJORTH_MOBILITY else comp
            elif code == CODE_AR:
                _ar(v, p, out, o)
                o += p
                continue
            elif code == CODE_MNF or code == CODE_MDF:
                if not have_spec:
                    mnf, mdf = _mnf_mdf(power[c], n, fs)
                    have_spec = True
                out[o] = mnf if code == CODE_MNF else mdf
            elif code == CODE_LOG_MAV:
                out[o] = math.log(_mav(v) + eps)
            elif code == CODE_LOG_WL:
                out[o] = math.log(_wl(v) + eps)
            else:
                out[o] = np.nan  # unknown code: the wrapper never sends one
            o += 1
    return True


@kernel(f"boolean({F2}, {I1}, {F1}, {F1})")
def window_features(x, codes, params, out):
    """Features of one window, channel-major, written into ``out``.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_channels)
    codes : ndarray of shape (n_codes,) int64
        Indices into :data:`~emtl_stream.kernels.feature_codes.FEATURE_CODES` (the
        ``CODE_*`` constants), in output order within a channel.
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


@kernel(f"void({F3}, {I1}, {F1}, {F2}, {B1})")
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
