"""The ``status`` reply, built from plain values.

:func:`build_status` is a pure function: the daemon passes what it knows (state,
live model, stream, counters, stored maps, session) and gets the reply that
docs/protocol.md describes.
"""

from __future__ import annotations

#: ``status.map_history``: how many of the newest maps, and which of their stored fields.
MAP_HISTORY_LEN = 20
MAP_HISTORY_KEYS = ("version", "created", "reason", "objective", "previous_objective", "roll",
                    "map_rotation", "parent", "burst", "fit_s")


def _count(obj, name: str, kind=int):
    """``obj.name`` as ``kind`` (0 when ``obj`` is None or lacks it)."""
    return kind(getattr(obj, name, 0) or 0)


def build_status(*, state: str, version, classes, stream_name: str, desc, connected: bool,
                 reason: str, windows: int, stale_windows: int, inlet, pipeline,
                 uptime_s: float, maps: list, last_error: str, session=None,
                 now: float | None = None) -> dict:
    """Return the ``status`` reply.

    Parameters
    ----------
    state : str
        The state machine's state.
    version : int or None
        The live map version.
    classes : list of str
        The live model's classes (empty before a model exists).
    stream_name : str
        ``[stream] name``, reported while no stream was ever connected.
    desc : StreamDescription or None
        The connected (or last connected) stream.
    connected : bool
    reason : str
        Why the stream is not connected (reported only then).
    windows, stale_windows : int
        Windows classified so far, and how many of them were stale.
    inlet : EMGInlet or None
        Its ``n_lost_samples``, ``total_outage_s`` and ``n_outages`` are reported.
    pipeline : FeaturePipeline or None
        Its ``n_skipped_nonfinite`` counts as dropped.
    uptime_s : float
    maps : list of dict
        The stored maps' meta, oldest first (``StateStore.list_maps``).
    last_error : str
    session : Session, optional
        The running calibration session (a manual one is not reported).
    now : float, optional
        The LSL clock, needed with ``session``.
    """
    out = {
        "state": state,
        "model": version,
        "classes": list(classes),
        "stream": {
            "name": desc.name if desc else stream_name,
            "channels": desc.n_channels if desc else None,
            "rate": desc.rate if desc else None,
            "connected": bool(connected),
            # why not connected: the refusal of a wrong stream, a loss, or none found
            **({} if connected else {"reason": reason}),
        },
        "windows": windows,
        "stale_windows": stale_windows,
        "dropped": _count(inlet, "n_lost_samples") + _count(pipeline, "n_skipped_nonfinite"),
        # the outage in progress included (an operator asks while the stream is gone)
        "outage_s": _count(inlet, "total_outage_s", float),
        "outages": _count(inlet, "n_outages"),
        "uptime_s": uptime_s,
        "maps": [m["version"] for m in maps],
        # the newest maps' provenance, for an operator's history (bounded reply size)
        "map_history": [{k: m.get(k) for k in MAP_HISTORY_KEYS}
                        for m in maps[-MAP_HISTORY_LEN:]],
        "last_error": last_error,
    }
    if session is not None and session.purpose != "manual":
        out["calibration"] = {"purpose": session.purpose,
                              "elapsed_s": float(now) - session.t0,
                              "duration_s": session.duration_s, "windows": session.n_windows}
    return out
