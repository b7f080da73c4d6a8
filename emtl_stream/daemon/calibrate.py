"""Calibration sessions and their fits, driven by the daemon's loop and its handlers.

A session (:class:`~.session.Session`) is begun by a control handler (or the
automatic mode), ticked by the loop, and finished when its schedule ends or on
``fit``; finishing checks the burst, stores it and submits its fit job to the
worker (:mod:`.jobs`). When the loop collects the job's result, the matching
installer stores the new map (or source model, or speed calibration) and swaps it
in, or refuses it with a ``calibration_failed`` event: the live map stays.

Every function takes the :class:`~.service.Daemon` as ``d`` and runs in its loop
thread; none of them blocks.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import CalibrationError, StreamError
from ..logs import logger
from . import jobs
from .session import Session
from .state import State

__all__ = ["abort_session", "begin_manual", "begin_prompted", "begin_unlabelled",
           "calibration_failed", "cancel", "collect_fit", "finish_session", "install_speed",
           "tick_session"]


def begin_prompted(d, purpose: str, schedule) -> dict:
    """Start a prompted session (the schedule is already validated).

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    purpose : {"recalibrate", "train", "ramp"}
        What the burst is for.
    schedule : PromptSchedule
        The prompts.
    """
    window_s = d.pipeline.window_s
    session = Session(purpose, float(d.clock()), window_s, schedule=schedule,
                      step_s=d.pipeline.step / d.pipeline.fs)
    d.transition("start_prompting")
    d.session = session
    ramp = {"ramp": True} if purpose == "ramp" else {}
    d.event("calibration_started", purpose=purpose, classes=list(schedule.classes),
            seconds_per_class=schedule.seconds_per_class,
            repetitions=schedule.repetitions, duration_s=schedule.duration_s, **ramp)
    return {"state": "calibrating", "duration_s": schedule.duration_s, **ramp}


def begin_unlabelled(d, seconds: float, trigger: str = "request") -> dict:
    """Start collecting unlabelled windows for a zero-label recalibration.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    seconds : float
        How long to collect.
    trigger : {"request", "shift_suspected"}
        Who asked (reported in the events).
    """
    if d.live is None:
        raise CalibrationError("no source model yet: train one first (train command)")
    if d.session is not None or d.fit is not None:
        raise CalibrationError("a calibration is in progress; send cancel first")
    if not d.connected or d.pipeline is None:
        raise StreamError("no EMG stream connected; recalibration needs live data")
    step_s = d.pipeline.step / d.pipeline.fs
    session = Session("unlabelled", float(d.clock()), d.pipeline.window_s,
                      seconds=float(seconds),
                      max_windows=int(math.ceil(float(seconds) / step_s)) + 1)
    d.transition("start_recording", purpose="unlabelled")
    d.session = session
    d.event("calibration_started", purpose="unlabelled", classes=d.live.classes,
            duration_s=float(seconds), labels=False, trigger=trigger)
    return {"state": "calibrating", "duration_s": float(seconds), "labels": False}


def begin_manual(d) -> Session:
    """Start a manual (label command) session.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).

    Returns
    -------
    Session
    """
    session = Session("manual", float(d.clock()), d.pipeline.window_s
                      if d.pipeline is not None else 0.0)
    d.transition("start_recording")
    d.session = session
    return session


def tick_session(d) -> None:
    """Advance the running session: publish its prompt, track its state, finish it when due.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    """
    s = d.session
    if s is None or s.purpose == "manual":
        return
    from ..io import protocol

    now = float(d.clock())
    ring = d.pipeline.ring if d.pipeline is not None else None
    data_until = (float(ring.timestamps[(ring.n_written - 1) % ring.capacity])
                  if ring is not None and ring.n_written else -math.inf)
    prompt, done = s.tick(now, data_until)
    if s.prompted and not done:
        # status.state: "recording" only while windows are recorded, else "prompting"
        recording = s.recording_at(now)
        if recording and d.fsm.state == State.PROMPTING:
            d.transition("start_recording")
        elif not recording and d.fsm.state == State.RECORDING:
            d.transition("pause_recording")
    if prompt is not None:
        if prompt.new_step and d.prompt_markers is not None:
            d.prompt_markers.push(prompt.cls)
        d.publisher.publish("prompt", protocol.prompt_msg(
            cls=prompt.cls, remaining_s=prompt.remaining_s, step=prompt.step, of=prompt.of,
            **prompt.extra()))
    if done:
        finish_session(d)


def finish_session(d) -> dict:
    """Close the session: check the burst and start its fit, or fail it.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).

    Returns
    -------
    dict
        The reply fields of the ``fit`` command (``state``, ``windows``, ...).
    """
    s = d.session
    d.session = None
    live = d.live
    if s.purpose == "unlabelled":
        X = s.unlabelled_windows()
        kw, ring = jobs.transfer_settings(d.config, live.bundle.n_channels, live.H)
        d.transition("start_fitting", windows=int(len(X)), purpose="unlabelled")
        d.worker.submit("unlabelled", None, "unlabelled", jobs.unlabelled_transfer_job,
                        live.bundle.components, X, live.H.copy(), live.b.copy(),
                        transfer_kwargs=kw, ring_channels=ring, live_rotation=live.rotation)
        return {"state": "fitting", "windows": int(len(X))}
    classes = live.classes if (live is not None and s.purpose != "train") else None
    try:
        X, labels = s.check(classes, d.config.calibration.min_windows_per_class)
    except CalibrationError as exc:
        return calibration_failed(d, str(exc))
    try:
        burst_id = d.store.save_burst(
            s.collector.to_arrays(),
            {"purpose": s.purpose, "n_windows": int(len(X)), "model": d.version,
             "counts": s.collector.counts(), "window_ms": d.pipeline.window_ms,
             "step_ms": d.pipeline.step_ms})
    except OSError as exc:  # nothing is fitted from a burst that is not on disk
        return calibration_failed(d, f"could not save burst: {exc}; map {d.version} "
                                  "stays live")
    d.transition("start_fitting", burst=burst_id, windows=int(len(X)))
    if s.purpose == "train":
        d.worker.submit("train", burst_id, s.purpose, jobs.train_job, X, labels,
                        **jobs.train_settings(d.config, d.extractor,
                                              d.pipeline.window_ms, d.pipeline.step_ms,
                                              d.stream_desc.n_channels,
                                              d.stream_desc.rate))
    elif s.purpose == "ramp":  # speed from the ramps through the live map; H stays
        from ..model.speed import speed_kwargs

        d.worker.submit("speed", burst_id, s.purpose, jobs.speed_job, X, labels,
                        live.H.copy(), live.b.copy(), (live.bundle.meta or {}).get("speed"),
                        classes=live.classes, feature_names=d.extractor.feature_names,
                        n_channels=live.bundle.n_channels,
                        speed_kwargs=speed_kwargs(d.config))
    else:
        kw, ring = jobs.transfer_settings(d.config, live.bundle.n_channels, live.H)
        d.worker.submit("transfer", burst_id, s.purpose, jobs.transfer_job,
                        live.bundle.components, X, labels, live.H.copy(), live.b.copy(),
                        transfer_kwargs=kw, ring_channels=ring)
    return {"state": "fitting", "burst": burst_id, "windows": int(len(X))}


def calibration_failed(d, reason: str, **fields) -> dict:
    """Announce a failed calibration; the live map stays.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    reason : str
        Why, for the event and the log.
    **fields
        Extra fields of the ``calibration_failed`` event.
    """
    d.last_error = reason
    if d.fsm.can("fail"):
        d.transition("fail")
    d.event("calibration_failed", reason=reason, model=d.version, **fields)
    return {"state": d.fsm.state.value, "error": reason}


def abort_session(d, reason: str) -> None:
    """Drop the running session (e.g. the stream was lost).

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    reason : str
        Why, for the log.
    """
    d.session = None
    calibration_failed(d, reason)


def cancel(d) -> bool:
    """Stop the session or the running fit; True if there was one.

    A running fit is told to stop at its next check (:class:`.worker.FitWorker`);
    nothing queues behind it and its result is never used.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    """
    if d.session is None and d.fit is None:
        return False
    d.session = None
    d.worker.cancel()
    d.transition("cancel")
    d.event("calibration_failed", reason="cancelled by request", model=d.version)
    return True


def collect_fit(d) -> None:
    """Install the worker's finished fit, if there is one (or announce its failure).

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    """
    try:
        done = d.worker.collect()
    except Exception as exc:
        logger.warning("fit failed: %s", exc, exc_info=True)
        calibration_failed(d, f"{type(exc).__name__}: {exc}")
        return
    if done is None:
        return
    fit, result = done
    if fit.kind == "train":
        _install_trained(d, result)
    elif fit.kind == "unlabelled":
        _install_unlabelled(d, result)
    elif fit.kind == "speed":
        install_speed(d, result, fit.burst)
    else:
        _install_transfer(d, result, fit.burst)


def _install_trained(d, result) -> None:
    d.store.set_live(None)
    d.install_bundle(result["bundle"], persist=True)
    d.transition("fit_done")
    d.event("model_swapped", model=d.version, reason="new source model",
            classes=d.bundle.classes, fit_s=result["fit_s"])
    d.event("calibration_done", purpose="train", model=d.version,
            train_accuracy=result["accuracy"], fit_s=result["fit_s"])


def _save_map(d, H, b, meta, **fields) -> int | None:
    """Store a new map and make it the live one on disk.

    Returns None (after a failed calibration; the old map keeps serving) when it
    cannot be written.
    """
    try:
        version = d.store.save_map(H, b, meta)
        d.store.set_live(version)
    except OSError as exc:
        calibration_failed(d, f"could not save map {d.store.next_map_version()}: "
                           f"{exc}; map {d.version} stays live", **fields)
        return None
    return version


def _install_transfer(d, result, burst_id) -> None:
    guard = result.get("guard")
    if guard is not None and guard["kept_live"]:
        # The fit ran, but the live map predicted the burst's held-out windows as well:
        # a refusal, not a swap to a copy of the live map under a new version.
        calibration_failed(
            d, f"the live map classifies held-out burst windows at least as well as the "
            f"new map ({guard['live']:.3f} vs {guard['new']:.3f}); map {d.version} stays "
            "live", burst=burst_id, guard=guard)
        return
    new, old = result["objective"], result["previous_objective"]
    if not (np.isfinite(new) and new >= old):
        calibration_failed(
            d, f"new map does not beat the current one on the burst (penalised "
            f"log-likelihood {new:.4g} vs {old:.4g}); map {d.version} stays live")
        return
    from .adapt import fitted_rotation

    rotation = fitted_rotation(result.get("rotation"), d.live.rotation, result.get("ring"))
    version = _save_map(d, result["H"], result["b"], d.new_map_meta(
        burst=burst_id, objective=new, previous_objective=old, parent=d.version,
        n_iter=result["n_iter"], roll=result["roll"], converged=result["converged"],
        fit_s=result["fit_s"], reason="recalibration", map_rotation=rotation))
    if version is None:
        return
    d.swap_map(result["H"], result["b"], version, rotation=rotation)
    d.transition("fit_done")
    d.last_fit = result
    d.event("model_swapped", model=version, reason="recalibration", burst=burst_id)
    d.event("calibration_done", model=version, objective=new, previous_objective=old,
            n_iter=result["n_iter"], roll=result["roll"], fit_s=result["fit_s"])


def install_speed(d, result, burst_id) -> None:
    """Store the ramp calibration in the source bundle (one atomic write), then serve it.

    Parameters
    ----------
    d : Daemon
        The daemon (loop thread).
    result : dict
        :func:`~.jobs.speed_job`'s result.
    burst_id : int
        The stored ramp burst.
    """
    import dataclasses

    bundle = d.live.bundle
    meta = {**(bundle.meta or {}), "speed": result["speed"],
            "speed_source": {"session": "ramp", "burst": burst_id, "map": d.version,
                             "counts": result["counts"], "created": time.time()}}
    new = dataclasses.replace(bundle, meta=meta)
    try:
        d.store.save_source(new)
    except OSError as exc:  # not stored: keep serving the old calibration, say why
        try:  # the store cleared its commit marker first: put the old model back
            d.store.save_source(bundle)
        except OSError:
            logger.error("the source model could not be re-stored either", exc_info=True)
        calibration_failed(d, f"the speed calibration could not be stored ({exc}); the "
                           "old one stays live", purpose="ramp")
        return
    d.live = dataclasses.replace(d.live, bundle=new)
    d.speed = d.make_speed(new)
    d.transition("fit_done")
    sp = result["speed"]
    moving = [k for k, r in enumerate(sp["rest"]) if not r]
    d.event("calibration_done", purpose="ramp", model=d.version, burst=burst_id,
            speed={key: [sp[key][k] for k in moving] for key in ("classes", "low",
                                                                 "high")},
            ramped=list(result["counts"]), fit_s=result["fit_s"])


def _install_unlabelled(d, result) -> None:
    metrics = dict(result.metrics)
    if not result.accepted:
        calibration_failed(d, f"zero-label fit refused: {result.reason}; map "
                           f"{d.version} stays live", purpose="unlabelled")
        return
    version = _save_map(d, result.H, result.b, d.new_map_meta(
        reason="unlabelled", parent=d.version, **metrics), purpose="unlabelled")
    if version is None:
        return
    # The reference describes well-mapped windows of this source model, so it stays:
    # if the new map fits, the level returns to it; if not, the watch fires again.
    d.swap_map(result.H, result.b, version, reference=d.watch.reference,
               rotation=metrics.get("map_rotation"))
    d.transition("fit_done")
    d.last_fit = metrics
    d.event("model_swapped", model=version, reason="unlabelled")
    d.event("calibration_done", model=version, purpose="unlabelled", **metrics)
