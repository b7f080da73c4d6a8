"""Compile or cache-load every kernel before the daemon binds a socket.

numba compiles on first call; with ``cache=True`` the machine code is written
next to the module and a later process only loads it. Calling every kernel here,
with the dtypes and the code paths the daemon uses (the configured feature set,
the per-window classifier, transfer EM with its ring search and structure, both
the dense and the conjugate-gradient M-step, shared and per-component
precisions), moves that cost out of the first window and the first calibration:
the daemon never pays compile time while serving.
"""

from __future__ import annotations

import time

import numpy as np

from ..logs import logger


def _toy_source(m: int, shared: bool, rng):
    from ..model.source import SourceComponents

    K = 3
    means = rng.normal(size=(K, m))
    scale = np.array([1.0, 1.0, 1.0]) if shared else np.array([1.0, 1.3, 0.8])
    P = np.stack([np.eye(m) * s for s in scale])
    return SourceComponents(
        means=means, prec_factor=P, log_det_prec=2.0 * m * np.log(scale),
        log_weights=np.full(K, -np.log(K)),
        log_label_given_comp=np.where(np.eye(K) > 0, 0.0, -np.inf),
        classes=np.array(["a", "b", "c"]), shared_precision=shared)


def warm_up(n_channels: int = 8, fs: float = 200.0, feature_names=("mav", "wl", "zc", "ssc"),
            window_ms: float = 200.0, transfer_kwargs: dict | None = None,
            ring: bool = True) -> dict:
    """Run every kernel once on small inputs of production dtypes.

    Parameters
    ----------
    n_channels : int
        Electrodes of the stream (the ring size for the transfer warm-up).
    fs : float
        Sampling rate (Hz).
    feature_names : sequence of str
        The configured feature set.
    window_ms : float
        Window length.
    transfer_kwargs : dict, optional
        The daemon's TransferEM settings (``bundle.transfer_kwargs``).
    ring : bool
        Whether recalibration searches channel rolls.

    Returns
    -------
    dict
        Seconds per stage (``features``, ``classify``, ``transfer_*``) and ``total``.
    """
    from ..model.classify import MappedClassifier
    from ..model.transfer import TransferEM
    from ..pipeline.features import FeatureExtractor

    rng = np.random.default_rng(0)
    times = {}
    t_all = t0 = time.perf_counter()
    extractor = FeatureExtractor(tuple(feature_names), n_channels=n_channels, fs=fs)
    n = max(int(round(window_ms * fs / 1000.0)), extractor.min_samples, 8)
    window = rng.normal(size=(n, n_channels))
    x = extractor.transform(window)
    extractor.transform_batch(window[None].repeat(2, axis=0))
    times["features"] = time.perf_counter() - t0

    # Compiled kernels do not depend on array sizes, so the transfer paths are warmed
    # on a small toy ring (at most 8 electrodes, the daemon's features per channel):
    # the real shape at 64 electrodes would be a 16384-unknown solve, not a warm-up.
    per_channel = max(1, x.shape[0] // n_channels)
    toy_channels = min(n_channels, 8)
    m = toy_channels * per_channel
    kw = dict(transfer_kwargs or {})
    kw["max_iter"] = 3
    ring_channels = toy_channels if ring else None
    for shared in (True, False):
        comps = _toy_source(m, shared, rng)
        t0 = time.perf_counter()
        clf = MappedClassifier(comps, np.eye(m))
        clf.classify_one(comps.means[0])
        clf.log_marginal(comps.means[:1])
        clf.predict_proba(comps.means[:1])
        times[f"classify_{'shared' if shared else 'full'}"] = time.perf_counter() - t0
        X = comps.means[np.arange(12) % 3] + 0.1 * rng.normal(size=(12, m))
        y = comps.classes[np.arange(12) % 3]
        for solver in ("dense", "cg"):
            t0 = time.perf_counter()
            tem = TransferEM(comps, ring_channels=ring_channels, solver=solver, **kw)
            tem.fit(X, y)
            tem.objective(X, y)
            times[f"transfer_{'shared' if shared else 'full'}_{solver}"] = (
                time.perf_counter() - t0)
    times["total"] = time.perf_counter() - t_all
    logger.info("kernel warm-up %.2f s (%s)", times["total"],
                ", ".join(f"{k} {v:.2f} s" for k, v in times.items() if k != "total"))
    return times


def warm_up_for(config, bundle=None) -> dict:
    """:func:`warm_up` with the daemon's configuration (and source model, if any)."""
    from .bundle import transfer_kwargs

    ring = bool(config.stream.ring and config.transfer.ring_search)
    if bundle is not None:
        return warm_up(bundle.n_channels, bundle.fs, bundle.features.get("names", ("mav",)),
                       bundle.window_ms, transfer_kwargs(config, bundle.n_channels), ring)
    channels = config.stream.channels or 8
    return warm_up(channels, config.stream.rate or 200.0, config.features.names,
                   config.features.window_ms, transfer_kwargs(config, channels), ring)
