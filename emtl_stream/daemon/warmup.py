"""Compile or cache-load every kernel before the daemon binds a socket.

numba compiles on first call; with ``cache=True`` the machine code is written
next to the module and a later process only loads it. Calling every kernel here,
with the dtypes and the code paths the daemon uses (the configured feature set,
the per-window classifier, transfer EM with its ring search and structure, both
the dense and the conjugate-gradient M-step, shared and per-component
precisions), moves that cost out of the first window and the first calibration:
the daemon never pays compile time while serving.

numba's cache keys a kernel on its own source file only: after an edit to a callee
in another file, the cached caller keeps the old machine code. :func:`clear_cache`
deletes the package's cached kernels (``*.nbi`` index, ``*.nbc`` code) where numba
reads them (under ``NUMBA_CACHE_DIR`` if set, else ``kernels/__pycache__`` or the
user-wide numba cache), so the next warm-up compiles from source.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np

from ..logs import logger

#: Modules holding numba kernels, imported (compiled or cache-loaded) by the warm-up.
KERNEL_MODULES = ("emtl_stream.kernels.linalg", "emtl_stream.kernels.features",
                  "emtl_stream.kernels.estep", "emtl_stream.kernels.mstep")
_CACHE_SUFFIXES = (".nbi", ".nbc")


def _kernel_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "kernels"


def cache_dirs() -> list[Path]:
    """Return the folders numba reads this package's cached kernels from (existing or not).

    Mirrors numba's cache locators: with ``NUMBA_CACHE_DIR`` set only the folder
    under it is used; otherwise the ``__pycache__`` beside the kernel sources, or the
    user-wide numba cache when that is not writable.
    """
    from numba.core import config as numba_config
    from numba.core.caching import _CacheLocator
    from numba.misc.appdirs import AppDirs

    src = str(_kernel_dir() / "estep.py")
    sub = _CacheLocator.get_suitable_cache_subpath(src)  # one folder per source folder
    if numba_config.CACHE_DIR:
        return [Path(numba_config.CACHE_DIR) / sub]
    return [_kernel_dir() / "__pycache__",
            Path(AppDirs(appname="numba", appauthor=False).user_cache_dir) / sub]


def clear_cache(dirs=None) -> list[Path]:
    """Delete the cached machine code of every emtl_stream kernel.

    Call it before the kernels are imported (``emtl-stream warmup --clear-cache`` and
    ``.ci/run`` do): a process that already loaded a kernel keeps that code.

    Parameters
    ----------
    dirs : sequence of path-like, optional
        Folders to clear; default :func:`cache_dirs` (all of them).

    Returns
    -------
    list of Path
        The files removed.
    """
    modules = {name.rsplit(".", 1)[1] for name in KERNEL_MODULES}
    dirs = cache_dirs() if dirs is None else [Path(d) for d in dirs]
    removed = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            # numba names cache files "<module>.<function>-<line>.py<ver>[.<n>].nb[ic]"
            if path.suffix in _CACHE_SUFFIXES and path.name.split(".", 1)[0] in modules:
                try:
                    path.unlink()
                except FileNotFoundError:  # another process removed it first
                    continue
                removed.append(path)
    logger.info("removed %d cached kernel file(s) from %s", len(removed),
                ", ".join(str(d) for d in dirs))
    return removed


def kernel_signatures() -> dict[str, int]:
    """Compiled signatures per kernel (``module.function``) of the imported kernel modules.

    A count that grows while the daemon serves means serving compiled (or
    cache-loaded) a specialisation the warm-up missed.
    """
    import sys

    from numba.core.registry import CPUDispatcher

    out = {}
    for name in KERNEL_MODULES:
        mod = sys.modules.get(name)
        if mod is None:
            continue
        for attr, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == name:
                out[f"{name.rsplit('.', 1)[1]}.{attr}"] = len(obj.signatures)
    return out


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
        Seconds per stage (``import``, ``features``, ``classify_*``, ``transfer_*``),
        ``total``, and the split of ``total`` into ``compile`` (numba compiling from
        source) and ``cache_load`` (everything else: loading cached code and running
        the toy inputs).
    """
    from numba.core import event

    compile_s = []
    with event.install_timer("numba:compile", compile_s.append), \
            event.install_recorder("numba:compile") as record:
        times = _warm_up(n_channels, fs, feature_names, window_ms, transfer_kwargs, ring)
    times["compile"] = compile_s[0] if compile_s else 0.0
    times["cache_load"] = max(0.0, times["total"] - times["compile"])
    n_compiled = sum(1 for _, ev in record.buffer if ev.is_start)
    logger.info("kernel warm-up %.2f s: %.2f s compiling %d function(s), %.2f s loading "
                "cached code and running (%s)", times["total"], times["compile"], n_compiled,
                times["cache_load"],
                ", ".join(f"{k} {v:.2f} s" for k, v in times.items()
                          if k not in ("total", "compile", "cache_load")))
    return times


def _warm_up(n_channels, fs, feature_names, window_ms, transfer_kwargs, ring) -> dict:
    rng = np.random.default_rng(0)
    times = {}
    t_all = t0 = time.perf_counter()
    for name in KERNEL_MODULES:  # eager signatures compile or cache-load at import
        importlib.import_module(name)
    times["import"] = time.perf_counter() - t0

    from ..model.classify import MappedClassifier
    from ..model.transfer import TransferEM
    from ..pipeline.features import FeatureExtractor
    from ..pipeline.windowing import ms_to_samples

    t0 = time.perf_counter()
    extractor = FeatureExtractor(tuple(feature_names), n_channels=n_channels, fs=fs)
    n = max(ms_to_samples(window_ms, fs, "window_ms"), extractor.min_samples, 8)
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
    return times


def warm_up_for(config, bundle=None) -> dict:
    """:func:`warm_up` with the daemon's configuration (and source model, if any).

    Parameters
    ----------
    config : Config
        The daemon's configuration.
    bundle : SourceBundle, optional
        The source model: its stream shape and features; default from ``[stream]``.
    """
    from .bundle import transfer_settings

    if bundle is not None:
        kw, ring = transfer_settings(config, bundle.n_channels,
                                     n_features=bundle.components.n_features)
        return warm_up(bundle.n_channels, bundle.fs, bundle.features.get("names", ("mav",)),
                       bundle.window_ms, kw, ring is not None)
    channels = config.stream.channels or 8
    kw, ring = transfer_settings(config, channels)
    return warm_up(channels, config.stream.rate or 200.0, config.features.names,
                   config.features.window_ms, kw, ring is not None)
