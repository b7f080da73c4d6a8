"""Compile or cache-load every kernel before the daemon binds a socket.

numba compiles on first call; with ``cache=True`` the machine code is written
next to the module and a later process only loads it. Calling every kernel here,
with the dtypes and shapes the daemon uses, moves that cost out of the first
window and the first calibration: the daemon never pays compile time while serving.
"""

from __future__ import annotations

import time

import numpy as np

from ..logs import logger


def warm_up(n_channels: int = 8, fs: float = 200.0, feature_names=("mav", "wl", "zc", "ssc"),
            window_ms: float = 200.0) -> dict:
    """Run every kernel once on small inputs of production dtypes.

    Parameters
    ----------
    n_channels : int
    fs : float
    feature_names : sequence of str
    window_ms : float

    Returns
    -------
    dict
        Seconds spent per stage (``features``, ``classify``, ``transfer_shared``,
        ``transfer_full``) and ``total``.
    """
    from ..model.classify import MappedClassifier
    from ..model.source import SourceComponents
    from ..model.transfer import TransferEM
    from ..pipeline.features import FeatureExtractor

    rng = np.random.default_rng(0)
    times = {}
    t_all = t0 = time.perf_counter()
    extractor = FeatureExtractor(tuple(feature_names), n_channels=n_channels, fs=fs)
    n = max(int(round(window_ms * fs / 1000.0)), 8)
    window = rng.normal(size=(n, n_channels))
    x = extractor.transform(window)
    extractor.transform_batch(window[None].repeat(2, axis=0))
    times["features"] = time.perf_counter() - t0

    m = x.shape[0]
    for shared in (True, False):
        K = 3
        means = rng.normal(size=(K, m))
        P = np.stack([np.eye(m) * (1.0 + 0.1 * k * (not shared)) for k in range(K)])
        comps = SourceComponents(
            means=means, prec_factor=P, log_det_prec=2 * np.log(np.abs(np.diagonal(P, axis1=1, axis2=2))).sum(1),
            log_weights=np.full(K, -np.log(K)), log_label_given_comp=np.where(np.eye(K) > 0, 0.0, -np.inf),
            classes=np.array(["a", "b", "c"]), shared_precision=shared)
        t0 = time.perf_counter()
        if shared:
            clf = MappedClassifier(comps, np.eye(m))
            clf.classify_one(x)
            clf.log_marginal(x[None])
            times["classify"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        X = means[np.arange(12) % K] + 0.1 * rng.normal(size=(12, m))
        y = np.array(["a", "b", "c"])[np.arange(12) % K]
        TransferEM(comps, max_iter=3).fit(X, y)
        times["transfer_shared" if shared else "transfer_full"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - t_all
    logger.info("kernel warm-up %.2f s (%s)", times["total"],
                ", ".join(f"{k} {v:.2f} s" for k, v in times.items() if k != "total"))
    return times
