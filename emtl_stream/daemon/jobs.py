"""Fit jobs run in the worker thread: pure functions of explicit arguments.

Nothing of the daemon crosses to the worker: the loop thread copies what a fit
needs (source components, burst, live map, settings) into the call, and the
job returns a plain result. A job checks its ``cancel`` event between stages and
passes it into every estimator it fits as ``should_stop``, asked before every EM
(or L-BFGS) iteration, so ``cancel`` ends any fit within one iteration; a
cancelled job raises :class:`~emtl_stream.errors.FitCancelled` and its result is
never used.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..errors import CalibrationError, FitCancelled
from ..logs import logger
from .bundle import train_bundle
from .bundle import transfer_settings as bundle_transfer_settings

__all__ = ["FitCancelled", "train_job", "train_settings", "transfer_job", "transfer_settings",
           "unlabelled_transfer_job"]


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise FitCancelled("cancelled by request")


def transfer_settings(config, n_channels: int, H_live) -> tuple[dict, int | None]:
    """TransferEM keyword arguments and ``ring_channels`` for a recalibration.

    Called in the loop thread; the result is passed to the job. The settings are
    :func:`~emtl_stream.daemon.bundle.transfer_settings` with the live map, the
    same function the offline evaluations call.

    Parameters
    ----------
    config : Config
        The daemon's configuration.
    n_channels : int
        Electrodes of the source model's stream.
    H_live : ndarray of shape (m, m)
        The live map (the shrink target when ``[transfer] shrink_to = "current"``).

    Returns
    -------
    kwargs : dict
        Keyword arguments of :class:`~emtl_stream.model.transfer.TransferEM`.
    ring_channels : int or None
        Electrodes of the roll search, or ``None`` when it is off.
    """
    return bundle_transfer_settings(config, n_channels, H_live=H_live)


def _finite_map(H, b) -> bool:
    return bool(np.all(np.isfinite(H)) and np.all(np.isfinite(b)))


def transfer_job(components, X, labels, H_live, b_live, *, transfer_kwargs: dict,
                 ring_channels: int | None, cancel: threading.Event | None = None) -> dict:
    """Fit H on a labelled burst (worker thread).

    Parameters
    ----------
    components : SourceComponents
    X : ndarray of shape (N, n)
    labels : sequence of str, length N
    H_live : ndarray of shape (m, n)
    b_live : ndarray of shape (m,)
    transfer_kwargs : dict
        TransferEM keyword arguments (see :func:`transfer_settings`).
    ring_channels : int or None
    cancel : threading.Event, optional

    Returns
    -------
    dict
        ``H``, ``b``, ``objective``, ``previous_objective``, ``n_iter``, ``converged``,
        ``roll``, ``rotation`` (the winning start's ring rotation in electrode spacings;
        None when the live map's own start won), ``ring`` (whether the roll search ran),
        ``trace``, ``fit_s`` and ``guard`` (``TransferEM.guard_``: the held-out
        accuracies of the new and the live map, or None when the guard did not run).
    """
    from ..model.transfer import TransferEM

    _check_cancel(cancel)
    t0 = time.perf_counter()
    tem = TransferEM(components, ring_channels=ring_channels, **transfer_kwargs)
    tem.fit(X, labels, H_init=H_live, b_init=b_live if transfer_kwargs.get("bias") else None,
            should_stop=None if cancel is None else cancel.is_set)
    _check_cancel(cancel)
    H, b = tem.H_, tem.b_
    if not _finite_map(H, b):
        raise CalibrationError("transfer EM returned a non-finite map; the old map stays live")
    new_obj = float(tem.objective(X, labels))
    old_obj = float(tem.objective(X, labels, H=H_live, b=b_live))
    return dict(H=H, b=b, objective=new_obj, previous_objective=old_obj,
                n_iter=int(tem.n_iter_), converged=bool(tem.converged_),
                roll=getattr(tem, "best_roll_", None),
                rotation=getattr(tem, "rotation_", None), ring=ring_channels is not None,
                trace=list(map(float, tem.log_likelihood_)), fit_s=time.perf_counter() - t0,
                guard=tem.guard_)


def unlabelled_transfer_job(components, X, H_live, b_live, *, transfer_kwargs: dict,
                            ring_channels: int | None,
                            cancel: threading.Event | None = None,
                            live_rotation: float | None = None):
    """Fit H on unlabelled live windows and judge it (worker thread).

    The fit and its guard are :func:`.adapt.fit_unlabelled` (cross-fitted held-out
    likelihood gain, a roll stable across halves, a non-degenerate class mix); this
    wrapper adds the cancel checks and the fit time in seconds.

    Parameters
    ----------
    components : SourceComponents
    X : ndarray of shape (N, n)
        Unlabelled windows in stream order (non-finite rows are dropped).
    H_live : ndarray of shape (m, n)
    b_live : ndarray of shape (m,)
    transfer_kwargs : dict
        TransferEM keyword arguments (the live H becomes the shrink target).
    ring_channels : int or None
        Electrodes on the ring (enables the roll starts).
    cancel : threading.Event, optional
    live_rotation : float, optional
        The live map's ring rotation in electrode spacings (None: unknown).

    Returns
    -------
    UnlabelledFit
        ``accepted``, ``reason``, ``H``, ``b`` and ``metrics``; never raises for bad
        data (a refusal carries the reason and the live map).
    """
    from .adapt import fit_unlabelled

    _check_cancel(cancel)
    t0 = time.perf_counter()
    result = fit_unlabelled(components, X, H_live, b_live, transfer_kwargs=transfer_kwargs,
                            ring_channels=ring_channels,
                            should_stop=None if cancel is None else cancel.is_set,
                            live_rotation=live_rotation)
    _check_cancel(cancel)
    result.metrics["fit_s"] = time.perf_counter() - t0
    return result


def train_job(X, labels, *, kind: str, covariance_type: str, n_components_per_class: int,
              extractor, window_ms: float, step_ms: float, n_channels: int, rate: float,
              filter_spec: dict | None = None, speed_kwargs: dict | None = None,
              cancel: threading.Event | None = None) -> dict:
    """Train a source model on a prompted burst (worker thread).

    Parameters
    ----------
    X : ndarray of shape (N, n)
    labels : sequence of str, length N
    kind, covariance_type, n_components_per_class
        ``[model]`` settings.
    extractor : FeatureExtractor
        The one the burst's windows were computed with (stored in the bundle).
    window_ms, step_ms : float
    n_channels : int
    rate : float
    filter_spec : dict, optional
        The band-pass/notch filter the windows went through (recorded in the bundle).
    speed_kwargs : dict, optional
        :func:`~emtl_stream.model.speed.speed_kwargs` of the config: the bundle then
        carries a proportional-speed calibration from the burst.
    cancel : threading.Event, optional

    Returns
    -------
    dict
        ``bundle`` (with its shift reference from held-out burst windows), ``fit_s``,
        ``accuracy`` (on the burst).
    """
    _check_cancel(cancel)
    t0 = time.perf_counter()
    labels = np.asarray(labels)
    bundle, model, note = train_bundle(
        X, labels, extractor, window_ms, step_ms, n_channels, rate, kind=kind,
        covariance_type=covariance_type, n_components_per_class=n_components_per_class,
        filter_spec=filter_spec, speed_kwargs=speed_kwargs,
        should_stop=None if cancel is None else cancel.is_set, source="prompted train session")
    if note:
        logger.info("%s", note)
    _check_cancel(cancel)
    return dict(bundle=bundle, fit_s=time.perf_counter() - t0,
                accuracy=float(np.mean(model.predict(X) == labels)))


def train_settings(config, extractor, window_ms: float, step_ms: float, n_channels: int,
                   rate: float) -> dict:
    """Keyword arguments of :func:`train_job` for a training session (loop thread).

    Parameters
    ----------
    config : Config
        Its ``[model]``, ``[features]`` (the filter) and ``[speed]`` sections are used.
    extractor : FeatureExtractor
        The one the session's windows were computed with.
    window_ms, step_ms : float
        The live pipeline's windowing.
    n_channels : int
    rate : float
        The connected stream's shape.
    """
    from ..model.speed import speed_kwargs
    from .bundle import filter_spec_from_config

    mc = config.model
    return dict(kind=mc.kind, covariance_type=mc.covariance_type,
                n_components_per_class=mc.n_components_per_class, extractor=extractor,
                window_ms=window_ms, step_ms=step_ms, n_channels=n_channels, rate=rate,
                filter_spec=filter_spec_from_config(config.features),
                speed_kwargs=speed_kwargs(config))


def speed_job(X, labels, H_live, b_live, base, *, classes, feature_names, n_channels: int,
              speed_kwargs: dict, cancel: threading.Event | None = None) -> dict:
    """Re-derive the proportional-speed calibration from a ramp session (worker thread).

    Parameters
    ----------
    X : ndarray of shape (N, n)
        Raw features of the ramp session's labelled windows.
    labels : sequence of str, length N
    H_live : ndarray of shape (n, n)
    b_live : ndarray of shape (n,)
        The live map the windows are read through (``z = H x + b``).
    base : dict or None
        The bundle's current calibration (``meta["speed"]``).
    classes, feature_names, n_channels
        The bundle's classes and feature layout (for a bundle without a calibration).
    speed_kwargs : dict
        :func:`~emtl_stream.model.speed.speed_kwargs` of the config.
    cancel : threading.Event, optional

    Returns
    -------
    dict
        ``speed`` (:meth:`SpeedCalibration.to_dict`), ``counts`` (windows per class),
        ``fit_s``.
    """
    from ..model.speed import ramp_calibration

    _check_cancel(cancel)
    t0 = time.perf_counter()
    labels = [str(v) for v in labels]
    try:
        cal = ramp_calibration(X, labels, H_live, b_live, base, classes=classes,
                               feature_names=feature_names, n_channels=n_channels,
                               **speed_kwargs)
    except ValueError as exc:
        raise CalibrationError(f"speed calibration from the ramps failed: {exc}") from None
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return dict(speed=cal.to_dict(), counts=counts, fit_s=time.perf_counter() - t0)
