"""What the page shows, derived from the daemon's published messages and status replies.

:class:`ViewState` is a plain object driven by explicit calls (``on_status``,
``on_message``, ``on_unreachable``, ``tick``), tested without sockets or threads. It
keeps no fact of its own about the daemon: every value comes from the last ``status``
reply or from a published message, and what cannot be derived from them (the history
of maps created before this process started) is shown as unknown rather than guessed.

The state is split into *parts* (``link``, ``status``, ``pred``, ``health``,
``activity``, ``prompt``, ``calibration``, ``history``, ``alerts``). Every change bumps
a global sequence number and the part's version, so a page connection can send exactly
the parts that changed since its last push; a slow page therefore gets the newest
values, never a backlog.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Iterable

PARTS = ("link", "status", "pred", "health", "activity", "prompt", "calibration", "history",
         "alerts")

#: Event kinds shown to the operator as alerts, with their level.
ALERT_LEVELS = {
    "calibration_failed": "error",
    "shift_suspected": "warning",
    "stream_lost": "error",
    "stream_restored": "info",
    "bad_input": "warning",
    "calibration_done": "info",
    "rollback": "info",
}

MAX_ALERTS = 20
# A prompt older than this means the daemon stopped prompting (ended or died).
PROMPT_STALE_S = 1.5
# Window rate and message loss are measured over this many seconds of pred messages.
RATE_WINDOW_S = 2.0


def next_class_after(step: int, of: int, classes: list[str], repetitions: int) -> str | None:
    """Return the class prompted after step ``step`` (1-based), or ``None`` if unknown or none.

    The daemon prompts ``classes`` ``repetitions`` times in order, with a rest prompt
    between two class prompts when rests are configured (docs/protocol.md: rest prompts
    count as steps). With ``n`` class prompts the schedule therefore has ``2n - 1``
    steps (rests) or ``n`` (no rests); any other ``of`` means the schedule is not the one
    announced in ``calibration_started`` and nothing is claimed.

    Parameters
    ----------
    step, of : int
        The prompt's ``step`` and ``of`` fields.
    classes : list of str
        ``classes`` of the ``calibration_started`` event.
    repetitions : int
        ``repetitions`` of that event.
    """
    seq = list(classes) * max(int(repetitions), 1)
    n = len(seq)
    if n == 0:
        return None
    if of == 2 * n - 1 and n > 1:
        k = step // 2  # class prompts sit at odd steps 1, 3, ...; the next after step s
    elif of == n:
        k = step
    else:
        return None
    return seq[k] if 0 <= k < n else None


def step_kind(step: int, of: int, name: str, classes: list[str], repetitions: int) -> str:
    """``"rest"`` or ``"class"`` for a prompt.

    The wire name ``"rest"`` is ambiguous when a class is also called ``rest`` (the
    synthetic armband's no-motion class); with a known schedule the step's position
    decides, otherwise the name does.

    Parameters
    ----------
    step, of : int
        1-based step number and total number of steps.
    name : str
        The prompt's wire class name.
    classes : list of str
        The session's classes, in prompt order (empty: unknown).
    repetitions : int
        Passes over the classes.
    """
    n = len(classes) * max(int(repetitions), 1)
    if n > 1 and of == 2 * n - 1:
        return "rest" if step % 2 == 0 else "class"
    if n and of == n:
        return "class"
    return "rest" if name == "rest" else "class"


def channel_activity(x: list[float], channels: int | None,
                     feature_names: Iterable[str] = ()) -> dict | None:
    """Per-channel activity from a ``feat`` vector (channel-major, mapped features).

    Parameters
    ----------
    x : list of float, length n_channels * n_features
        The ``x`` field of a ``feat`` message.
    channels : int or None
        Channel count from ``status.stream.channels`` (used when the feature names do
        not fit ``len(x)``).
    feature_names : iterable of str
        ``[features] names`` of the configuration; the ``mav`` entry is shown if there.

    Returns
    -------
    dict or None
        ``{"values": [...], "feature": name}`` with one non-negative value per channel,
        or ``None`` when ``x`` cannot be split into channels.
    """
    names = list(feature_names)
    n = len(x)
    if names and n % len(names) == 0:
        n_feat = len(names)
        k = names.index("mav") if "mav" in names else 0
        label = names[k]
    elif channels and n % int(channels) == 0:
        n_feat, k, label = n // int(channels), 0, "feature 1"
    else:
        return None
    values = [abs(float(x[c * n_feat + k])) for c in range(n // n_feat)]
    return {"values": values, "feature": label}


def _describe_event(msg: dict) -> str:
    kind = msg.get("kind")
    if kind == "calibration_failed":
        return f"Calibration failed: {msg.get('reason')} (map {msg.get('model')} stays live)"
    if kind == "shift_suspected":
        return f"Electrode shift suspected: {msg.get('reason')}"
    if kind == "stream_lost":
        return f"EMG stream lost: {msg.get('reason')}"
    if kind == "stream_restored":
        return (f"EMG stream restored: {msg.get('name', '?')} "
                f"({msg.get('channels', '?')} ch @ {msg.get('rate', '?')} Hz)")
    if kind == "bad_input":
        return f"Bad input: {msg.get('reason')}"
    if kind == "calibration_done":
        return f"Calibration done: map {msg.get('model')} is live"
    if kind == "rollback":
        return f"Rolled back to map {msg.get('model')} (was {msg.get('previous')})"
    return str(kind)


class ViewState:
    """The page's state, one part at a time; thread-safe.

    Parameters
    ----------
    control, pub : str
        The daemon's addresses (shown on the page when it is unreachable).
    feature_names : iterable of str
        ``[features] names``, to find the MAV entry of each channel in ``feat``.
    clock : callable
        Wall clock in seconds (``time.time``); times shown on the page come from it.
    """

    def __init__(self, control: str, pub: str, feature_names: Iterable[str] = (),
                 clock: Callable[[], float] = time.time):
        self.clock = clock
        self.feature_names = list(feature_names)
        self.cond = threading.Condition()
        self.seq = 0
        self._versions = {p: 0 for p in PARTS}
        self._parts: dict[str, Any] = {
            "link": {"daemon": False, "error": "not contacted yet", "control": control,
                     "pub": pub, "restarts": 0},
            "status": None,
            "pred": None,
            "health": {"window_rate_hz": None, "lost_messages": 0, "latency_ms": None},
            "activity": None,
            "prompt": None,
            "calibration": None,
            "history": [],
            "alerts": [],
        }
        self._alerts: collections.deque = collections.deque(maxlen=MAX_ALERTS)
        self._pred_times: collections.deque = collections.deque()
        self._last_seq: int | None = None
        self._lost = 0
        self._last_uptime: float | None = None
        self._prompt_wall: float | None = None
        self._prompt_step: int | None = None
        self._history: dict[tuple, dict] = {}
        self._pending_why: str | None = None
        self._down_said = False
        for p in PARTS:
            self._touch(p)

    # ------------------------------------------------------------------ reading
    def snapshot(self, since: int = 0) -> tuple[int, dict]:
        """``(seq, {part: value})`` of the parts changed after ``since`` (0: all).

        Parameters
        ----------
        since : int
            A sequence number from an earlier call.
        """
        with self.cond:
            return self.seq, {p: self._parts[p] for p in PARTS if self._versions[p] > since}

    def wait(self, since: int, timeout: float) -> int:
        """Block until something changed after ``since`` or ``timeout`` s passed; the seq.

        Parameters
        ----------
        since : int
            A sequence number from an earlier call.
        timeout : float
            Seconds to wait at most.
        """
        with self.cond:
            self.cond.wait_for(lambda: self.seq > since, timeout)
            return self.seq

    # ------------------------------------------------------------------ updating
    def _touch(self, part: str) -> None:
        self.seq += 1
        self._versions[part] = self.seq

    def _set(self, part: str, value) -> None:
        if self._parts[part] != value:
            self._parts[part] = value
            self._touch(part)

    def _alert(self, kind: str, text: str, level: str) -> None:
        self._alerts.append({"kind": kind, "text": text, "level": level, "when": self.clock()})
        self._parts["alerts"] = list(self._alerts)
        self._touch("alerts")

    def on_unreachable(self, error: str) -> None:
        """Record that the daemon did not answer a status request (``error`` says why).

        Parameters
        ----------
        error : str
            Why the request failed.
        """
        with self.cond:
            link = dict(self._parts["link"])
            link.update(daemon=False, error=error)
            self._set("link", link)
            if not self._down_said:  # once per outage, also when it is down from the start
                self._down_said = True
                self._alert("daemon_lost", f"Daemon not reachable: {error}", "error")
                self._set("prompt", None)
            self.cond.notify_all()

    def on_status(self, reply: dict) -> None:
        """Take in a ``status`` reply (``ok: true``).

        Parameters
        ----------
        reply : dict
            The reply.
        """
        with self.cond:
            status = {k: v for k, v in reply.items() if k not in ("v", "ok")}
            link = dict(self._parts["link"])
            if not link["daemon"]:
                link.update(daemon=True, error=None)
                if self._down_said:
                    self._alert("daemon_back", "Daemon reachable again", "info")
            self._down_said = False
            uptime = status.get("uptime_s")
            if (self._last_uptime is not None and isinstance(uptime, (int, float))
                    and uptime + 0.5 < self._last_uptime):
                link["restarts"] += 1
                self._last_seq = None
                self._alert("daemon_restarted", "The daemon restarted", "warning")
            self._last_uptime = uptime if isinstance(uptime, (int, float)) else None
            self._set("link", link)
            self._set("status", status)
            self._merge_maps(status)
            cal = self._parts["calibration"]
            if cal is not None and status.get("state") not in ("prompting", "recording",
                                                               "fitting"):
                if cal.get("active") and "calibration" not in status:
                    cal = dict(cal, active=False)
                    self._set("calibration", cal)
            self.cond.notify_all()

    def tick(self) -> None:
        """Expire a prompt the daemon stopped sending (calibration over or daemon gone)."""
        with self.cond:
            if (self._parts["prompt"] is not None and self._prompt_wall is not None
                    and self.clock() - self._prompt_wall > PROMPT_STALE_S):
                self._set("prompt", None)
                self._prompt_step = None
                self.cond.notify_all()

    def on_message(self, topic: str, msg: dict) -> None:
        """Take in a published message from the daemon.

        Parameters
        ----------
        topic : str
            The message's topic.
        msg : dict
            The decoded message.
        """
        with self.cond:
            handler = getattr(self, f"_on_{topic}", None)
            if handler is not None:
                handler(msg)
                self.cond.notify_all()

    # ------------------------------------------------------------------ per topic
    def _on_pred(self, msg: dict) -> None:
        now = self.clock()
        seq = int(msg["seq"])
        # A smaller seq than before is a restarted daemon, not a loss.
        if self._last_seq is not None and seq > self._last_seq + 1:
            self._lost += seq - self._last_seq - 1
        self._last_seq = seq
        self._pred_times.append(now)
        while self._pred_times and now - self._pred_times[0] > RATE_WINDOW_S:
            self._pred_times.popleft()
        span = self._pred_times[-1] - self._pred_times[0]
        rate = (len(self._pred_times) - 1) / span if span > 0.2 else None
        latency_ms = 1000.0 * (float(msg["t_pub"]) - float(msg["t"]))
        self._set("pred", {k: msg.get(k) for k in ("seq", "label", "index", "proba",
                                                  "confidence", "rejected", "model", "stale",
                                                  "speed")})
        self._set("health", {"window_rate_hz": rate, "lost_messages": self._lost,
                             "latency_ms": latency_ms})

    def _on_feat(self, msg: dict) -> None:
        st = self._parts["status"] or {}
        channels = (st.get("stream") or {}).get("channels")
        act = channel_activity(msg.get("x") or [], channels, self.feature_names)
        if act is not None:
            self._set("activity", act)

    def _on_prompt(self, msg: dict) -> None:
        cal = self._parts["calibration"] or {}
        classes, reps = cal.get("classes") or [], cal.get("repetitions") or 1
        step, of, name = int(msg["step"]), int(msg["of"]), str(msg["class"])
        remaining = float(msg["remaining_s"])
        prev = self._parts["prompt"]
        duration = remaining
        if prev is not None and self._prompt_step == step:
            duration = max(prev["duration_s"], remaining)
        kind = step_kind(step, of, name, classes, reps)
        self._prompt_step = step
        self._prompt_wall = self.clock()
        self._set("prompt", {
            "class": name, "kind": kind, "remaining_s": remaining, "duration_s": duration,
            "step": step, "of": of,
            "next": next_class_after(step, of, classes, reps) if kind == "rest" else None,
            # a ramp session's class prompt: ramp slowly from rest to strong, not hold
            "ramp": msg.get("ramp") is True,
            "instruction": str(msg["instruction"]) if isinstance(msg.get("instruction"), str)
            else None,
        })

    def _on_event(self, msg: dict) -> None:
        kind = msg.get("kind")
        now = self.clock()
        if kind == "calibration_started":
            purpose = str(msg.get("purpose", "recalibrate"))
            self._set("calibration", {
                "active": True, "purpose": purpose, "classes": list(msg.get("classes") or []),
                "repetitions": int(msg.get("repetitions") or 1),
                "seconds_per_class": msg.get("seconds_per_class"),
                "duration_s": msg.get("duration_s"), "labels": msg.get("labels", True),
                "ramp": msg.get("ramp") is True or purpose == "ramp",
                "started": now, "outcome": None})
            unlabelled = msg.get("labels") is False or "unlabel" in purpose
            self._pending_why = "unlabelled" if unlabelled else (
                "trained" if purpose == "train" else "prompted")
        elif kind in ("calibration_done", "calibration_failed"):
            cal = dict(self._parts["calibration"] or {})
            cal.update(active=False, outcome=kind, reason=msg.get("reason"),
                       model=msg.get("model"), ended=now)
            if msg.get("purpose") == "ramp":  # the speed was recalibrated; the map stays
                cal.update(ramp=True, speed=msg.get("speed"))
            self._set("calibration", cal)
            self._set("prompt", None)
            self._prompt_step = None
            if kind == "calibration_done" and msg.get("purpose") != "ramp":
                entry = self._entry(("map", msg.get("model")), msg.get("model"))
                why = entry.get("why")
                if why in (None, "earlier"):  # listed by a status poll before this event
                    why = self._pending_why or "prompted"
                entry.update(why=why,
                             when=entry.get("when") or now, objective=msg.get("objective"),
                             previous_objective=msg.get("previous_objective"),
                             roll=msg.get("roll"), n_iter=msg.get("n_iter"))
                self._publish_history()
        elif kind == "model_swapped":
            reason = str(msg.get("reason", ""))
            if reason != "rollback":
                why = ("unlabelled" if "unlabel" in reason else
                       "trained" if "source" in reason else self._pending_why or "prompted")
                entry = self._entry(("map", msg.get("model")), msg.get("model"))
                entry.update(why=why, when=entry.get("when") or now)
                self._publish_history()
        elif kind == "rollback":
            self._entry(("rollback", now), msg.get("model")).update(
                why="rollback", when=now, previous=msg.get("previous"))
            self._publish_history()
        if kind in ALERT_LEVELS:
            self._alert(kind, _describe_event(msg), ALERT_LEVELS[kind])

    # ------------------------------------------------------------------ map history
    def _entry(self, key: tuple, version) -> dict:
        if key not in self._history:
            self._history[key] = {"version": version, "when": None, "why": None,
                                  "objective": None, "roll": None}
        return self._history[key]

    def _merge_maps(self, status: dict) -> None:
        # map_history: the newest maps with their stored provenance; maps: bare versions
        versions = status.get("map_history") or status.get("maps")
        if not isinstance(versions, list):
            return
        known = {k[1] for k in self._history if k[0] == "map"}
        changed = False
        for item in versions:
            # A map's stored metadata (map_history): its own time, objective and roll;
            # or a bare version (older than the history, or an older daemon).
            meta = item if isinstance(item, dict) else {"version": item}
            v = meta.get("version")
            if v in known or not isinstance(v, int) or isinstance(v, bool):
                continue
            why = meta.get("why") or meta.get("purpose") or meta.get("reason") or "earlier"
            why = {"recalibration": "prompted"}.get(why, why)
            if meta.get("labels") is False:
                why = "unlabelled"
            self._entry(("map", v), v).update(
                why=why, when=meta.get("created"), objective=meta.get("objective"),
                roll=meta.get("roll"))
            changed = True
        if changed:
            self._publish_history()

    def _publish_history(self) -> None:
        def order(item):
            (kind, _), e = item
            return (e["when"] is not None, e["when"] or 0.0,
                    e["version"] if isinstance(e["version"], int) else -1)
        rows = [dict(e) for _, e in sorted(self._history.items(), key=order, reverse=True)]
        self._parts["history"] = rows
        self._touch("history")
