"""Control commands: an explicit table from command name to handler.

Each handler takes the daemon and the request's fields (already type-checked by
:mod:`emtl_stream.io.protocol`) and returns the reply's fields, or raises an
:class:`~emtl_stream.errors.EmtlError` (or ``ValueError``) whose message becomes
the ``ok: false`` reply. Handlers run in the loop thread between two pulls.

Every number a client sends is checked against a documented bound *before*
anything is started or allocated (:mod:`.session`), so a refused request never
leaves a half-started session.
"""

from __future__ import annotations

from ..errors import CalibrationError, StreamError
from . import calibrate
from .session import MAX_UNLABELLED_S, check_session_request

#: Most labelled windows a manual session keeps (at a 50 ms step about 83 minutes).
MAX_MANUAL_WINDOWS = 100_000


def _require_idle(daemon, what: str) -> None:
    if daemon.session is not None or daemon.fit is not None:
        raise CalibrationError(f"cannot {what}: a calibration is in progress "
                               f"(state {daemon.fsm.state.value}); send cancel first")


def _require_stream(daemon, what: str) -> None:
    if not daemon.connected or daemon.pipeline is None:
        raise StreamError(f"no EMG stream connected; {what} needs live data")


def _running(daemon, s) -> str:
    """Describe the running (non-manual) session in words, with the time left."""
    left = max(0.0, s.t0 + s.duration_s - float(daemon.clock()))
    if s.purpose == "unlabelled":
        return (f"a zero-label recalibration is collecting live windows (about {left:.0f} s "
                "left); it needs no labels and fits by itself")
    kind = {"ramp": "ramp session", "train": "training session"}.get(s.purpose,
                                                                     "prompted recalibration")
    return (f"a {kind} is running (about {left:.0f} s left); its prompts label the windows "
            "and it fits by itself when they end")


def cmd_status(daemon) -> dict:
    """``status``: state, model, stream, counters.

    Parameters
    ----------
    daemon : Daemon
        The daemon the request is for (every handler takes it first).
    """
    return daemon.status()


def cmd_recalibrate(daemon, classes=None, seconds_per_class=None, repetitions=None,
                    labels=None, ramp=None) -> dict:
    """``recalibrate``: a prompted burst, a zero-label one or a ramp session.

    With ``labels: false`` the map is fitted without labels; with ``ramp: true`` the
    prompts ask for slow ramps and the speed calibration is re-derived.

    Parameters
    ----------
    daemon : Daemon
    classes : list of str, optional
        Classes to prompt; default: the configured ones, else every class of the model.
    seconds_per_class : float, optional
        Recorded seconds per class step; default from ``[calibration]``.
    repetitions : int, optional
        Passes over the classes; default from ``[calibration]``.
    labels : bool, optional
        ``False``: a zero-label recalibration instead of a prompted burst.
    ramp : bool, optional
        ``True``: a ramp session that re-derives the speed calibration (the map is kept).
    """
    if daemon.live is None:
        raise CalibrationError("no source model yet: train one first (train command)")
    _require_idle(daemon, "recalibrate")
    _require_stream(daemon, "recalibration")
    if labels is False:
        if classes is not None or seconds_per_class is not None or repetitions is not None:
            raise CalibrationError("a zero-label recalibration takes no classes, "
                                   "seconds_per_class or repetitions ([adapt] seconds sets "
                                   "its length)")
        seconds = float(daemon.config.adapt.seconds)
        if not 0 < seconds <= MAX_UNLABELLED_S:
            raise CalibrationError(f"[adapt] seconds must be in (0, {MAX_UNLABELLED_S:g}]")
        return calibrate.begin_unlabelled(daemon, seconds)
    known = daemon.live.classes
    cal = daemon.config.calibration
    if ramp:
        return _begin_ramp(daemon, classes, seconds_per_class, repetitions)
    classes = list(classes) if classes else list(cal.classes or known)
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise CalibrationError(f"unknown class(es) {unknown}; the model knows {known}")
    schedule = check_session_request(
        classes, cal.seconds_per_class if seconds_per_class is None else seconds_per_class,
        cal.repetitions if repetitions is None else repetitions, cal.lead_in_s, cal.rest_s)
    return calibrate.begin_prompted(daemon, "recalibrate", schedule)


def _begin_ramp(daemon, classes, seconds_per_class, repetitions) -> dict:
    """Validate a ramp session (classes that have a speed, a model that can carry one)."""
    from ..model.speed import SpeedCalibration, rest_flags

    bundle = daemon.live.bundle
    known = daemon.live.classes
    base = (bundle.meta or {}).get("speed")
    try:
        if base is not None:
            rest = SpeedCalibration.from_dict(base).rest
        else:
            rest = rest_flags(known)
            ext = daemon.extractor or bundle.make_extractor()
            SpeedCalibration.check_features(ext.feature_names, bundle.n_channels,
                                            daemon.config.speed.measure)
    except ValueError as exc:
        raise CalibrationError(f"this model cannot carry a proportional speed: {exc}") from None
    moving = [c for c, r in zip(known, rest) if not r]
    cal = daemon.config.calibration
    classes = list(classes) if classes else [c for c in (cal.classes or known) if c in moving]
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise CalibrationError(f"unknown class(es) {unknown}; the model knows {known}")
    resting = [c for c in classes if c not in moving]
    if resting:
        raise CalibrationError(f"{resting[0]!r} is the resting class, which has no speed; leave "
                               f"it out of a ramp session (movements: {moving})")
    if base is None and set(classes) != set(moving):
        raise CalibrationError(f"the model has no speed calibration yet, so the first ramp "
                               f"session must ramp every movement ({moving})")
    schedule = check_session_request(
        classes, cal.ramp_seconds_per_class if seconds_per_class is None else seconds_per_class,
        cal.repetitions if repetitions is None else repetitions, cal.lead_in_s, cal.rest_s)
    return calibrate.begin_prompted(daemon, "ramp", schedule)


def cmd_train(daemon, classes=None, seconds_per_class=None, repetitions=None) -> dict:
    """``train``: a prompted burst that trains a new source model.

    Parameters
    ----------
    daemon : Daemon
    classes : list of str, optional
        Classes to prompt; default: the configured ones.
    seconds_per_class : float, optional
        Recorded seconds per class step; default ``[calibration] train_seconds_per_class``.
    repetitions : int, optional
        Passes over the classes; default from ``[calibration]``.
    """
    _require_idle(daemon, "train")
    _require_stream(daemon, "training")
    classes = list(classes or daemon.config.model.classes
                   or (daemon.bundle.classes if daemon.bundle else []))
    if len(classes) < 2:
        raise CalibrationError("train needs at least two classes ([model] classes or the "
                               "'classes' field)")
    cal = daemon.config.calibration
    schedule = check_session_request(
        classes, cal.train_seconds_per_class if seconds_per_class is None else seconds_per_class,
        cal.repetitions if repetitions is None else repetitions, cal.lead_in_s, cal.rest_s)
    return calibrate.begin_prompted(daemon, "train", schedule)


def cmd_label(daemon, label=None) -> dict:
    """``label``: windows from now on belong to ``label`` (null: to none).

    Parameters
    ----------
    daemon : Daemon
    label : str or None
        A class of the model, or ``None`` to stop labelling.
    """
    return label_windows(daemon, label, None)


def label_windows(daemon, label, since) -> dict:
    """Label windows starting at LSL time ``since`` (default now); a Markers stream uses it.

    Parameters
    ----------
    daemon : Daemon
    label : str or None
        A class of the model, or ``None`` to stop labelling.
    since : float or None
        LSL time from which windows get ``label``; ``None``: now.
    """
    bundle = daemon.bundle
    if label is not None and bundle is not None and label not in bundle.classes:
        raise CalibrationError(f"unknown class {label!r}; the model knows {bundle.classes}")
    s = daemon.session
    if s is None:
        if label is None:  # nothing to stop: stay idle instead of opening an empty session
            return {"state": daemon.fsm.state.value, "label": None, "windows": 0}
        _require_idle(daemon, "label")
        if bundle is None:
            raise CalibrationError("no source model yet: train one first (train command)")
        s = calibrate.begin_manual(daemon)
    elif s.purpose != "manual":
        raise CalibrationError(f"cannot label: {_running(daemon, s)}; wait for "
                               "calibration_done, or send cancel first to label by hand")
    s.set_label(label, float(daemon.clock()) if since is None else float(since))
    return {"state": daemon.fsm.state.value, "label": label, "windows": s.n_windows}


def cmd_fit(daemon, min_windows=None) -> dict:
    """``fit``: fit H on the manually labelled windows.

    Parameters
    ----------
    daemon : Daemon
    min_windows : int, optional
        Fewest labelled windows the fit accepts; default from ``[calibration]``.
    """
    s = daemon.session
    if s is not None and s.purpose != "manual":
        raise CalibrationError(f"nothing to fit by hand: {_running(daemon, s)}; wait for "
                               "calibration_done, or send cancel to stop it")
    if s is None and daemon.fit is not None:
        raise CalibrationError(f"a fit is already running (state {daemon.fsm.state.value}); "
                               "wait for calibration_done, or send cancel to stop it")
    if s is None:
        raise CalibrationError("nothing to fit: label windows first with the label command")
    if min_windows is not None and s.n_windows < int(min_windows):
        raise CalibrationError(f"only {s.n_windows} labelled windows, "
                               f"fewer than min_windows={min_windows}")
    s.set_label(None, float(daemon.clock()))
    result = calibrate.finish_session(daemon)
    if "error" in result:  # the calibration_failed event is out; the reply says so too
        raise CalibrationError(result["error"])
    return result


def cmd_cancel(daemon) -> dict:
    """``cancel``: stop the session or the running fit; the live map stays.

    Parameters
    ----------
    daemon : Daemon
    """
    cancelled = calibrate.cancel(daemon)
    return {"state": daemon.fsm.state.value, "cancelled": cancelled}


def cmd_rollback(daemon, version=None) -> dict:
    """``rollback``: put an earlier map (default: the previous one) live.

    Parameters
    ----------
    daemon : Daemon
    version : int, optional
        The map version to put live.
    """
    _require_idle(daemon, "roll back")
    if daemon.live is None:
        raise CalibrationError("no source model yet: nothing to roll back")
    maps = [m["version"] for m in daemon.store.list_maps()]
    current = daemon.version
    if version is None:
        earlier = [v for v in maps if v < current]
        if not earlier:
            raise ValueError(f"no map before version {current} to roll back to")
        version = earlier[-1]
    if version not in maps:
        raise ValueError(f"no map version {version}; known versions {maps}")
    if version == current:  # nothing to swap: no events, and the reply says so
        return {"model": current, "previous": current, "changed": False,
                "note": f"map {current} is already live; nothing changed"}
    H, b, meta = daemon.store.load_map(version)
    if H.shape != daemon.live.H.shape:
        raise ValueError(f"map {version} has shape {H.shape}; the live model needs "
                         f"{daemon.live.H.shape}")
    stored = meta.get("source_fingerprint")
    if stored is not None and stored != daemon.live.fingerprint:
        raise ValueError(f"map {version} was fitted for another source model ({stored})")
    daemon.store.set_live(version)
    from .maps import stored_rotation
    from .shift import ShiftReference

    ref = meta.get("shift_reference")
    daemon.swap_map(H, b, version, ShiftReference.from_dict(ref) if ref else None,
                    rotation=stored_rotation(meta))
    daemon.event("rollback", model=version, previous=current)
    daemon.event("model_swapped", model=version, reason="rollback")
    return {"model": version, "previous": current, "changed": True}


def cmd_save(daemon) -> dict:
    """``save``: make sure the live pointer names the live map.

    Parameters
    ----------
    daemon : Daemon
    """
    daemon.store.set_live(daemon.version)
    return {"model": daemon.version, "state_dir": str(daemon.store.root)}


def cmd_shutdown(daemon) -> dict:
    """``shutdown``: stop the daemon after this reply.

    Parameters
    ----------
    daemon : Daemon
    """
    daemon.request_stop()
    return {"state": "stopping"}


#: Command name -> handler(daemon, **fields). Checked against protocol.COMMANDS by a test.
HANDLERS = {
    "status": cmd_status,
    "recalibrate": cmd_recalibrate,
    "train": cmd_train,
    "label": cmd_label,
    "fit": cmd_fit,
    "cancel": cmd_cancel,
    "rollback": cmd_rollback,
    "save": cmd_save,
    "shutdown": cmd_shutdown,
}


def handle_request(daemon, req) -> dict:
    """Dispatch one validated request to its handler.

    Parameters
    ----------
    daemon : Daemon
    req : dict
        A request decoded and validated by :mod:`emtl_stream.io.protocol`.
    """
    handler = HANDLERS.get(req.cmd)
    if handler is None:  # protocol.py already refuses unknown commands
        raise ValueError(f"unknown command {req.cmd!r}")
    return handler(daemon, **req.fields)
