"""The wire format as pure functions (no sockets): published frames and control requests.

Published messages are one frame each, ``<topic> <space> <UTF-8 compact JSON object>``,
so a subscriber with ``ZMQ_CONFLATE`` always holds one whole, newest message. Control
requests are one JSON object ``{"v": 1, "cmd": NAME, ...}`` and every request gets one
reply ``{"v": 1, "ok": true, ...}`` or ``{"v": 1, "ok": false, "error": REASON}``.

Every JSON message carries ``"v": PROTOCOL_VERSION``. Floats must be finite: JSON has
no NaN, and a NaN that reached a control loop would be worse than an error here.
``docs/protocol.md`` is the prose version of this module.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ProtocolError

PROTOCOL_VERSION = 1

#: Published topics and their required fields (besides ``v``), in protocol.md order.
TOPICS: dict[str, tuple[str, ...]] = {
    "pred": ("seq", "t", "t_pub", "label", "index", "proba", "confidence", "rejected", "model"),
    "feat": ("seq", "t", "x", "model"),
    "event": ("kind", "t_pub"),
    "prompt": ("class", "remaining_s", "step", "of"),
}

#: Event kinds and the kind-specific fields each one must carry.
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "state": ("state",),
    "calibration_started": ("classes",),
    "calibration_done": ("model",),
    "calibration_failed": ("reason",),
    "model_swapped": ("model",),
    "rollback": ("model", "previous"),
    "stream_lost": ("reason",),
    "stream_restored": (),
    "bad_input": ("reason",),
    "shift_suspected": ("reason",),
    "stream_refused": ("reason",),
    "map_refused": ("reason", "model"),
}

DEFAULT_MAX_REQUEST_BYTES = 65536


# --------------------------------------------------------------------------- JSON helpers
def _json_default(obj):
    """Let numpy scalars and arrays through ``json.dumps`` (as plain numbers and lists)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON serialisable")


#: One encoder for every message (``json.dumps`` with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=_json_default)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; ``ProtocolError`` on NaN/inf or unserialisable values.

    Parameters
    ----------
    obj : object
        A JSON-able value; numpy scalars and arrays are accepted.
    """
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except ValueError as exc:  # allow_nan=False
        raise ProtocolError(f"message contains NaN or infinity, which JSON cannot carry "
                            f"({exc}); replace non-finite numbers before sending.") from exc
    except TypeError as exc:
        raise ProtocolError(f"message is not JSON serialisable: {exc}") from exc


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (JSON numbers must be finite)")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


#: Deepest nesting accepted by :func:`loads` (a request needs 2: object, class list).
#: Checked by a linear scan *before* parsing, because ``json`` recurses once per level
#: and a 2 kB message of brackets would otherwise end in ``RecursionError``.
MAX_JSON_DEPTH = 32
#: Requests are flatter still; anything deeper is refused before it is parsed.
MAX_REQUEST_DEPTH = 4

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = np.zeros(256, dtype=np.int8)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1


def json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text``, brackets inside strings not counted.

    Linear in ``len(text)`` and without recursion, so it can run on any input before
    ``json.loads``. Malformed text (an unterminated string) may over-count; that only
    turns one refusal into another.

    Parameters
    ----------
    text : str
        JSON text, well-formed or not.
    """
    bare = _JSON_STRING.sub("", text).encode("utf-8", "replace")
    if not bare:
        return 0
    steps = _BRACKETS[np.frombuffer(bare, dtype=np.uint8)].astype(np.int32)
    return max(0, int(np.cumsum(steps).max()))


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # "1e309" parses to inf without this
        raise ValueError(f"number {literal[:40]} is out of range for a float")
    return value


#: Longest integer literal accepted, in digits (a sign not counted). Every integer field
#: has a far smaller bound; this one is checked before the literal is converted, so a
#: 5000-digit number gets the same one-line refusal as any other out-of-bound value.
MAX_INT_DIGITS = 64


def _bounded_int_literal(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits, beyond every bound (integers have at "
                         f"most {MAX_INT_DIGITS} digits; every field's bound is in "
                         "docs/protocol.md)")
    return int(literal)


def loads(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse strict JSON.

    Rejects NaN/Infinity, out-of-range numbers (floats beyond the float range, integers
    longer than :data:`MAX_INT_DIGITS`), duplicate keys and nesting deeper than
    ``max_depth`` (all ``ValueError``; never ``RecursionError``).

    Parameters
    ----------
    data : bytes or str
        UTF-8 JSON text.
    max_depth : int
        Deepest nesting of arrays and objects accepted.

    Returns
    -------
    object
        The decoded value.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep; at most {max_depth} allowed")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_bounded_int_literal, object_pairs_hook=_no_duplicates)
    except RecursionError:  # unreachable after the depth scan; kept so no input escapes
        raise ValueError("JSON nested too deeply") from None


# --------------------------------------------------------------------------- publishing
def _check_topic(topic: str) -> bytes:
    if not isinstance(topic, str) or not topic or not topic.isascii() or any(
            c.isspace() for c in topic) or "\0" in topic:
        raise ProtocolError(f"topic must be a non-empty ASCII word without spaces, got {topic!r}.")
    return topic.encode("ascii")


def encode_pub(topic: str, obj: Mapping[str, Any]) -> bytes:
    """One published frame: ``topic + b" " + compact JSON``.

    Parameters
    ----------
    topic : str
        An ASCII word without spaces (``"pred"``, ``"feat"``, ``"event"``, ``"prompt"``).
    obj : mapping
        The message; should contain ``"v"`` (the builders below add it).

    Raises
    ------
    ProtocolError
        Bad topic, not a mapping, NaN/inf values, unserialisable values.
    """
    t = _check_topic(topic)
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"a published message must be a JSON object (dict), got "
                            f"{type(obj).__name__}.")
    return t + b" " + dumps(obj if type(obj) is dict else dict(obj))


def decode_pub(frame: bytes) -> tuple[str, dict]:
    """Inverse of :func:`encode_pub`: ``(topic, obj)``; ``ProtocolError`` if malformed.

    Parameters
    ----------
    frame : bytes
        One published frame, ``b"<topic> <json>"``.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a published frame must be bytes, got {type(frame).__name__}.")
    topic, sep, body = bytes(frame).partition(b" ")
    if not sep or not topic:
        raise ProtocolError("published frame has no '<topic> <json>' separator.")
    try:
        obj = loads(body.decode("utf-8"))
        topic_s = topic.decode("ascii")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"published frame on topic {topic!r} is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"published message on {topic_s!r} is not a JSON object.")
    return topic_s, obj


def _finite(value, name: str) -> float:
    if type(value) is float and math.isfinite(value):  # the daemon's case, without ABCs
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ProtocolError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ProtocolError(f"{name} must be finite, got {value}.")
    return value


def _int(value, name: str, minimum: int | None = 0) -> int:
    if type(value) is int and (minimum is None or value >= minimum):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ProtocolError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ProtocolError(f"{name} must be >= {minimum}, got {value}.")
    return value


def _float_list(values, name: str) -> list[float]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    out = arr.tolist()
    if math.isfinite(sum(out)):  # NaN and inf propagate into the sum: all are finite
        return out
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ProtocolError(f"{name} must be finite, element {bad} is {arr[bad]}.")
    return out  # finite values whose sum overflowed


def _with_extra(msg: dict, extra: Mapping[str, Any], builder: str) -> dict:
    clash = set(extra) & set(msg)
    if clash:
        raise ProtocolError(f"{builder}: extra field(s) {sorted(clash)} would overwrite "
                            "required fields.")
    msg.update(extra)
    return msg


def pred_msg(*, seq: int, t: float, t_pub: float, label: str, index: int, proba,
             confidence: float, rejected: bool, model: int | None, **extra) -> dict:
    """Build a ``pred`` message (one per window).

    Parameters
    ----------
    seq : int
        Window counter, contiguous from 1; a gap tells the subscriber it lost messages.
    t : float
        LSL timestamp (local clock) of the window's last sample.
    t_pub : float
        Local LSL clock when published (``t_pub - t`` is the processing latency).
    label : str
        Predicted class name.
    index : int
        Its index in ``proba`` (and in ``classes`` of ``status``).
    proba : sequence of float of shape (n_classes,)
    confidence : float
        Maximum posterior.
    rejected : bool
        True when ``confidence`` is below ``[classify] reject_below``.
    model : int or None
        Version of the live map H.
    **extra
        Additional fields (must not clash with the required ones).
    """
    msg = {"v": PROTOCOL_VERSION, "seq": _int(seq, "seq"), "t": _finite(t, "t"),
           "t_pub": _finite(t_pub, "t_pub"), "label": str(label), "index": _int(index, "index"),
           "proba": _float_list(proba, "proba"), "confidence": _finite(confidence, "confidence"),
           "rejected": bool(rejected),
           "model": None if model is None else _int(model, "model")}
    return _with_extra(msg, extra, "pred_msg")


def feat_msg(*, seq: int, t: float, x, model: int | None, **extra) -> dict:
    """Build a ``feat`` message: the mapped feature vector ``H x (+ b)`` of window ``seq``.

    Parameters
    ----------
    seq : int
        Window sequence number (the same as the window's ``pred``).
    t : float
        LSL timestamp of the window's last sample.
    x : array-like of shape (m,)
        The mapped feature vector.
    model : int or None
        Version of the live map H.
    **extra
        Additional fields (must not clash with the required ones).
    """
    msg = {"v": PROTOCOL_VERSION, "seq": _int(seq, "seq"), "t": _finite(t, "t"),
           "x": _float_list(x, "x"), "model": None if model is None else _int(model, "model")}
    return _with_extra(msg, extra, "feat_msg")


def event_msg(kind: str, *, t_pub: float, **fields) -> dict:
    """Build an ``event`` message.

    Parameters
    ----------
    kind : str
        One of :data:`EVENT_KINDS`.
    t_pub : float
        Local LSL clock when published.
    **fields
        Kind-specific fields; the ones listed in ``EVENT_KINDS[kind]`` are required
        (``reason`` on every failure kind).
    """
    if kind not in EVENT_KINDS:
        raise ProtocolError(f"event kind must be one of {sorted(EVENT_KINDS)}, got {kind!r}.")
    missing = [f for f in EVENT_KINDS[kind] if f not in fields]
    if missing:
        raise ProtocolError(f"event {kind!r} needs field(s) {missing}.")
    if "v" in fields:
        raise ProtocolError("event_msg: 'v' is set by the builder.")
    msg = {"v": PROTOCOL_VERSION, "kind": kind, "t_pub": _finite(t_pub, "t_pub")}
    msg.update(fields)
    dumps(msg)  # fail here, in the caller's frame, on NaN or unserialisable fields
    return msg


def prompt_msg(*, cls: str, remaining_s: float, step: int, of: int, **extra) -> dict:
    """Build a ``prompt`` message: what the user should do now.

    Parameters
    ----------
    cls : str
        Class name to perform, or ``"rest"`` between class prompts (wire field ``class``).
    remaining_s : float
        Seconds left in this step.
    step, of : int
        1-based step number and total number of steps.
    **extra
        Additional fields (must not clash with the required ones).
    """
    step, of = _int(step, "step", 1), _int(of, "of", 1)
    if step > of:
        raise ProtocolError(f"prompt step {step} is beyond of={of}.")
    msg = {"v": PROTOCOL_VERSION, "class": str(cls),
           "remaining_s": max(0.0, _finite(remaining_s, "remaining_s")), "step": step, "of": of}
    return _with_extra(msg, extra, "prompt_msg")


# --------------------------------------------------------------------------- control requests
# Bounds of the request fields. Each is a promise to the daemon that no single request
# makes it allocate or wait in proportion to a client's number: a session records at
# most MAX_CLASSES x MAX_RECORDED_S_PER_CLASS seconds (about 5 h at the limits).
#: Most classes one request may name (a model of 32 movements is already unusual).
MAX_CLASSES = 32
#: Longest class name or label, in characters.
MAX_NAME_CHARS = 64
#: Shortest and longest recorded time per class prompt, in seconds.
MIN_SECONDS_PER_CLASS = 0.1
MAX_SECONDS_PER_CLASS = 600.0
#: Most repetitions of the class sequence in one session.
MAX_REPETITIONS = 20
#: Recorded seconds per class over the whole session (seconds_per_class x repetitions).
MAX_RECORDED_S_PER_CLASS = 600.0
#: Largest ``fit.min_windows`` (the daemon only compares it with a count).
MAX_MIN_WINDOWS = 1_000_000
#: Largest map version (the store numbers versions from 1; 0 is never a live map).
MAX_VERSION = 2**31 - 1


def _show(value) -> str:
    """Render a client's value briefly for an error message (never 64 kB of digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class FieldSpec:
    """One request field: a checker that returns the clean value, and its documentation.

    Attributes
    ----------
    check : callable
        ``check(value, "cmd.field") -> clean value``; raises ``ProtocolError``.
    required : bool
    kind : str
        JSON type, as written in the bounds table of ``docs/protocol.md``.
    bounds : str
        The documented bounds (the same text appears in that table).
    doc : str
        What the field means.
    nullable : bool
        Whether ``null`` is a meaningful value (only ``label.label``). Elsewhere
        ``null`` is refused: omit a field to get its default.
    """

    check: Callable[[Any, str], Any]
    required: bool = False
    kind: str = ""
    bounds: str = ""
    doc: str = ""
    nullable: bool = False


def _bounded_int(v, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{name} must be an integer, got {type(v).__name__} {_show(v)}.")
    if v < lo:
        raise ProtocolError(f"{name} must be >= {lo}, got {_show(v)}.")
    if v > hi:
        raise ProtocolError(f"{name} must be <= {hi}, got {_show(v)}.")
    return v


def _int_field(lo: int, hi: int):
    return lambda v, name: _bounded_int(v, name, lo, hi)


def _seconds(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError(f"{name} must be a number, got {type(v).__name__} {_show(v)}.")
    if isinstance(v, int) and v.bit_length() > 64:
        raise ProtocolError(f"{name} must be <= {MAX_SECONDS_PER_CLASS:g}, got {_show(v)}.")
    v = float(v)
    if not math.isfinite(v):
        raise ProtocolError(f"{name} must be finite, got {v}.")
    if v < MIN_SECONDS_PER_CLASS:
        raise ProtocolError(f"{name} must be >= {MIN_SECONDS_PER_CLASS:g}, got {v:g}.")
    if v > MAX_SECONDS_PER_CLASS:
        raise ProtocolError(f"{name} must be <= {MAX_SECONDS_PER_CLASS:g}, got {v:g}.")
    return v


def _name(v, name: str) -> str:
    if not isinstance(v, str) or not v:
        raise ProtocolError(f"{name} must be a class name (non-empty string), got {_show(v)}.")
    if len(v) > MAX_NAME_CHARS:
        raise ProtocolError(f"{name} must be at most {MAX_NAME_CHARS} characters, got "
                            f"{len(v)}.")
    if not v.isprintable():
        raise ProtocolError(f"{name} must not contain control characters, got {_show(v)}.")
    return v


def _classes(v, name: str) -> list[str]:
    if not isinstance(v, list) or not v:
        raise ProtocolError(f"{name} must be a non-empty list of class names, got {_show(v)}.")
    if len(v) > MAX_CLASSES:
        raise ProtocolError(f"{name} lists {len(v)} classes; at most {MAX_CLASSES} allowed.")
    out = [_name(c, f"{name}[{i}]") for i, c in enumerate(v)]
    if len(set(out)) != len(out):
        raise ProtocolError(f"{name} lists a class twice: {_show(v)}.")
    return out


def _bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{name} must be true or false, got {type(v).__name__} {_show(v)}.")
    return v


def _label(v, name: str):
    return None if v is None else _name(v, name)


_NAMES = f"1-{MAX_CLASSES} distinct names, each 1-{MAX_NAME_CHARS} printable characters"
_SESSION = {
    "classes": FieldSpec(_classes, kind="list of str", bounds=_NAMES,
                         doc="classes to prompt (default: all of the model / [model] classes)"),
    "seconds_per_class": FieldSpec(
        _seconds, kind="number",
        bounds=f"{MIN_SECONDS_PER_CLASS:g} ≤ x ≤ {MAX_SECONDS_PER_CLASS:g}; "
               f"x × repetitions ≤ {MAX_RECORDED_S_PER_CLASS:g}",
        doc="recorded seconds per class prompt"),
    "repetitions": FieldSpec(_int_field(1, MAX_REPETITIONS), kind="int",
                             bounds=f"1 ≤ n ≤ {MAX_REPETITIONS}",
                             doc="how often the class sequence is prompted"),
}

#: Control commands and their fields. A field not listed is an error.
COMMANDS: dict[str, dict[str, FieldSpec]] = {
    "status": {},
    "recalibrate": {
        **_SESSION,
        "labels": FieldSpec(_bool, kind="bool", bounds="true or false",
                            doc="fit with the prompts' labels (default true); false fits the "
                                "map without labels"),
        "ramp": FieldSpec(_bool, kind="bool", bounds="true or false",
                          doc="prompt slow ramps from rest to a strong contraction and "
                              "re-derive the proportional-speed calibration from them through "
                              "the live map (default false); the map itself is kept"),
    },
    "train": dict(_SESSION),
    "label": {"label": FieldSpec(_label, required=True, kind="str or null",
                                 bounds=f"1-{MAX_NAME_CHARS} printable characters",
                                 doc="class of the windows from now on; null stops labelling",
                                 nullable=True)},
    "fit": {"min_windows": FieldSpec(_int_field(1, MAX_MIN_WINDOWS), kind="int",
                                     bounds=f"1 ≤ n ≤ {MAX_MIN_WINDOWS}",
                                     doc="refuse to fit on fewer labelled windows")},
    "cancel": {},
    "rollback": {"version": FieldSpec(_int_field(0, MAX_VERSION), kind="int",
                                      bounds=f"0 ≤ n ≤ {MAX_VERSION}",
                                      doc="map version (default: the previous one)")},
    "save": {},
    "shutdown": {},
}


def _check_session(cmd: str, fields: dict) -> None:
    """Check cross-field bounds: recorded time per class over the whole session.

    A ramp session is prompted, so it cannot also be a zero-label one.
    """
    if fields.get("ramp") is True and fields.get("labels") is False:
        raise ProtocolError(f"{cmd}: ramp and labels: false cannot be combined (a ramp session "
                            "is prompted); send one of them.")
    seconds, reps = fields.get("seconds_per_class"), fields.get("repetitions")
    if seconds is not None and reps is not None and seconds * reps > MAX_RECORDED_S_PER_CLASS:
        raise ProtocolError(f"{cmd}: seconds_per_class x repetitions must be <= "
                            f"{MAX_RECORDED_S_PER_CLASS:g} s, got {seconds:g} x {reps} = "
                            f"{seconds * reps:g} s.")


@dataclass(frozen=True)
class Request:
    """A validated control request.

    Attributes
    ----------
    cmd : str
        One of :data:`COMMANDS`.
    fields : dict
        Only the fields the client sent (validated and normalised), so a handler can
        be called as ``handler(**request.fields)``.
    """

    cmd: str
    fields: dict = field(default_factory=dict)


def parse_request(data: bytes, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> Request:
    """Decode and validate a control request.

    Parameters
    ----------
    data : bytes
        The request frame.
    max_bytes : int
        Size limit; checked before decoding.

    Returns
    -------
    Request

    Raises
    ------
    ProtocolError
        With a human-readable reason: too large, not UTF-8, not JSON, not an object,
        missing or other ``"v"``, missing/unknown ``"cmd"``, unknown or bad fields.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"request must be bytes, got {type(data).__name__}.")
    n = len(data)
    if n > max_bytes:
        raise ProtocolError(f"request of {n} bytes exceeds the limit of {max_bytes} bytes.")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request is not UTF-8 ({exc.reason} at byte {exc.start}).") from None
    try:
        obj = loads(text, max_depth=MAX_REQUEST_DEPTH)
    except ValueError as exc:
        if str(exc).startswith("an integer of"):  # valid JSON, but beyond every bound
            raise ProtocolError(f"request holds {exc}.") from None
        raise ProtocolError(f"request is not valid JSON: {exc}.") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"request must be a JSON object like {{\"v\": {PROTOCOL_VERSION}, "
                            f"\"cmd\": \"status\"}}, got a JSON {type(obj).__name__}.")
    if "v" not in obj:
        raise ProtocolError(f"request has no protocol version field \"v\" (this daemon speaks "
                            f"v={PROTOCOL_VERSION}).")
    v = obj.pop("v")
    if type(v) is not int or v != PROTOCOL_VERSION:  # 1.0 and true are not the integer 1
        raise ProtocolError(f"unsupported protocol version v={_show(v)}; this daemon speaks "
                            f"v={PROTOCOL_VERSION}.")
    if "cmd" not in obj:
        raise ProtocolError("request has no \"cmd\" field; commands: " + ", ".join(COMMANDS) + ".")
    cmd = obj.pop("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {_show(cmd)}; commands: {', '.join(COMMANDS)}.")
    spec = COMMANDS[cmd]
    unknown = sorted(set(obj) - set(spec))
    if unknown:
        known = ", ".join(spec) or "none"
        raise ProtocolError(f"unknown field(s) {unknown} for command {cmd!r} (fields: {known}).")
    fields = {}
    for name, fs in spec.items():
        if name not in obj:
            if fs.required:
                raise ProtocolError(f"command {cmd!r} needs field {name!r} ({fs.doc}).")
            continue
        value = obj[name]
        if value is None and not fs.nullable:
            raise ProtocolError(f"{cmd}.{name} must not be null; omit the field to get its "
                                f"default ({fs.doc}).")
        fields[name] = fs.check(value, f"{cmd}.{name}")
    if cmd in ("recalibrate", "train"):
        _check_session(cmd, fields)
    return Request(cmd, fields)


def encode_request(cmd: str, **fields) -> bytes:
    """Client side: ``{"v": 1, "cmd": cmd, **fields}`` as bytes (no validation of fields).

    Parameters
    ----------
    cmd : str
        The command.
    **fields
        Its fields.
    """
    if "v" in fields or "cmd" in fields:
        raise ProtocolError("'v' and 'cmd' are set by encode_request.")
    return dumps({"v": PROTOCOL_VERSION, "cmd": cmd, **fields})


def reply_ok(**fields) -> bytes:
    """``{"v": 1, "ok": true, **fields}`` as bytes.

    Parameters
    ----------
    **fields
        The reply's fields.
    """
    if "v" in fields or "ok" in fields:
        raise ProtocolError("'v' and 'ok' are set by reply_ok.")
    return dumps({"v": PROTOCOL_VERSION, "ok": True, **fields})


def reply_error(reason: str) -> bytes:
    """``{"v": 1, "ok": false, "error": reason}`` as bytes.

    Parameters
    ----------
    reason : str
        Why the request failed, for the client.
    """
    return dumps({"v": PROTOCOL_VERSION, "ok": False, "error": str(reason) or "error"})


def parse_reply(data: bytes) -> dict:
    """Client side: decode a reply; ``ProtocolError`` unless it is a v1 object with ``ok``.

    Parameters
    ----------
    data : bytes
        One reply frame.
    """
    try:
        obj = loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"reply is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ProtocolError(f"reply is not an object with a boolean \"ok\": {obj!r:.200}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"reply has protocol version {obj.get('v')!r}; this client speaks "
                            f"v={PROTOCOL_VERSION}.")
    return obj
