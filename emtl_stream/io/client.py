"""Python client of a running daemon: control requests and subscriptions.

``emtl_stream.Client`` is the public name. Control requests use a REQ socket with
the "lazy pirate" pattern: when no reply arrives within ``timeout_s`` the socket
is closed (linger 0) and a fresh one is made for the next request, so one lost
reply never wedges the REQ state machine; the request raises ``TimeoutError``
naming the address.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import zmq

from ..errors import ProtocolError
from ..logs import logger
from . import protocol
from .zmq_pub import read_curve_key


@dataclass(frozen=True)
class CurveClient:
    """Client-side CURVE keys.

    Parameters
    ----------
    server_public : str or bytes
        The daemon's public key (Z85 or certificate path).
    public, secret : str or bytes, optional
        This client's key pair (Z85 or certificate paths; the secret from a
        ``.key_secret`` file). Omitted: a fresh key pair per connection, which a
        daemon with an authorised-clients folder will refuse.
    """

    server_public: str | bytes
    public: str | bytes | None = None
    secret: str | bytes | None = None

    @classmethod
    def from_config(cls, zmq_config) -> "CurveClient | None":
        """From a ``[zmq]`` config section; ``None`` when the server has no CURVE key.

        Parameters
        ----------
        zmq_config : ZmqConfig
            The ``[zmq]`` config section.
        """
        if not zmq_config.curve_server_public:
            return None
        return cls(zmq_config.curve_server_public, zmq_config.curve_client_public or None,
                   zmq_config.curve_client_secret or None)

    def apply(self, sock: zmq.Socket) -> None:
        """Set the CURVE options on ``sock`` (before ``connect``).

        Parameters
        ----------
        sock : zmq.Socket
            A socket not yet connected.
        """
        if self.public and self.secret:
            public = read_curve_key(self.public, "public", "curve client public")
            secret = read_curve_key(self.secret, "secret", "curve client secret")
        else:
            public, secret = zmq.curve_keypair()
        sock.curve_serverkey = read_curve_key(self.server_public, "public", "curve server_public")
        sock.curve_publickey = public
        sock.curve_secretkey = secret


class Subscription:
    """Messages from the daemon's publisher; iterate or call :meth:`recv`.

    Created by :meth:`Client.subscribe`. Use as a context manager so the socket closes.
    Iterating raises ``TimeoutError`` when nothing arrives within ``timeout_s``;
    :meth:`recv` returns ``None`` instead. Malformed frames are logged and skipped.

    Parameters
    ----------
    ctx : zmq.Context
        The context the SUB socket is made in.
    address : str
        The daemon's PUB address.
    topics : iterable of str or None
        Topics to receive (``None``: all).
    conflate : bool
        Keep only the newest message (``ZMQ_CONFLATE``).
    timeout_s : float
        Default wait of :meth:`recv` and of iteration, in seconds.
    curve : CurveClient or None
        CURVE keys when the daemon has them configured.
    """

    def __init__(self, ctx: zmq.Context, address: str, topics: Iterable[str] | None,
                 conflate: bool, timeout_s: float, curve: CurveClient | None):
        self.address = address
        self.timeout_s = float(timeout_s)
        sock = ctx.socket(zmq.SUB)
        sock.linger = 0
        if conflate:
            # Keeps only the newest message. Works because every message is one frame;
            # with several topics the newest of *any* topic wins.
            sock.setsockopt(zmq.CONFLATE, 1)
        if curve is not None:
            curve.apply(sock)
        if topics is None:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            if isinstance(topics, str):
                topics = (topics,)
            for t in topics:
                # The trailing space stops "pred" from also matching "predx".
                sock.setsockopt(zmq.SUBSCRIBE, t.encode("ascii") + b" ")
        sock.connect(address)
        self._sock = sock

    def recv(self, timeout_s: float | None = None) -> tuple[str, dict] | None:
        """Next ``(topic, message)``, or ``None`` after ``timeout_s`` (default: the client's).

        Parameters
        ----------
        timeout_s : float, optional
            Seconds to wait; ``0`` returns at once.
        """
        if self._sock is None:
            raise RuntimeError("subscription is closed")
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        deadline = time.monotonic() + timeout
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(left_ms, zmq.POLLIN):
                return None
            frame = self._sock.recv(zmq.NOBLOCK)
            try:
                return protocol.decode_pub(frame)
            except ProtocolError as exc:
                logger.warning("skipping malformed message from %s: %s", self.address, exc)

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        while True:
            msg = self.recv()
            if msg is None:
                raise TimeoutError(f"no message from {self.address} within {self.timeout_s} s "
                                   "(is the daemon running and publishing?)")
            yield msg

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Client:
    """Talk to a running emtl_stream daemon.

    Parameters
    ----------
    control : str
        The daemon's control address.
    pub : str
        The daemon's publisher address.
    timeout_s : float
        Seconds to wait for a reply (and, in subscriptions, for a message).
    curve : CurveClient, optional
        CURVE keys when the daemon has them configured.
    context : zmq.Context, optional
        Default: ``zmq.Context.instance()``.
    max_request_bytes : int
        Requests larger than this are refused locally (the daemon would refuse them too).

    Notes
    -----
    :meth:`request` and the command methods return the reply dict as is, including
    ``{"ok": False, "error": ...}`` replies; only transport failures raise. A lock
    makes one Client usable from several threads (requests are serialised).

    Examples
    --------
    >>> with Client() as c:                               # doctest: +SKIP
    ...     print(c.status()["state"])
    ...     with c.subscribe(["pred"], conflate=True) as sub:
    ...         topic, pred = sub.recv()
    """

    def __init__(self, control: str = "tcp://127.0.0.1:5557", pub: str = "tcp://127.0.0.1:5556",
                 timeout_s: float = 5.0, curve: CurveClient | None = None,
                 context: zmq.Context | None = None, max_request_bytes: int = 65536):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}.")
        self.control = control
        self.pub = pub
        self.timeout_s = float(timeout_s)
        self.curve = curve
        self.max_request_bytes = int(max_request_bytes)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()
        self.n_resets = 0

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.linger = 0
            if self.curve is not None:
                self.curve.apply(sock)
            sock.connect(self.control)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
            self.n_resets += 1

    def request(self, cmd: str, **fields) -> dict:
        """Send ``{"v": 1, "cmd": cmd, **fields}``; return the reply dict.

        Parameters
        ----------
        cmd : str
            The command (``status``, ``recalibrate``, ...).
        **fields
            The command's fields, sent as given.

        Raises
        ------
        TimeoutError
            No reply within ``timeout_s`` (the message names the address); the socket
            is reset, so the next request starts clean.
        ProtocolError
            The request cannot be encoded or is too large, or the reply is malformed.
        """
        data = protocol.encode_request(cmd, **fields)
        if len(data) > self.max_request_bytes:
            raise ProtocolError(f"request {cmd!r} is {len(data)} bytes, over the limit of "
                                f"{self.max_request_bytes} bytes.")
        with self._lock:
            sock = self._socket()
            try:
                sock.send(data)
                if not sock.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                    self._reset()
                    raise TimeoutError(f"no reply from the daemon at {self.control} within "
                                       f"{self.timeout_s} s to {cmd!r} (is it running?)")
                reply = sock.recv()
            except zmq.ZMQError as exc:
                self._reset()
                raise ConnectionError(f"control request {cmd!r} to {self.control} failed: "
                                      f"{exc}") from exc
        return protocol.parse_reply(reply)

    # ------------------------------------------------------------------ commands
    @staticmethod
    def _given(**kw) -> dict:
        return {k: v for k, v in kw.items() if v is not None}

    def status(self) -> dict:
        """State, live map version, classes, stream, window and drop counters."""
        return self.request("status")

    def recalibrate(self, classes=None, seconds_per_class=None, repetitions=None,
                    labels: bool | None = None, ramp: bool | None = None) -> dict:
        """Start a recalibration (completion arrives as an ``event``).

        Parameters
        ----------
        classes : sequence of str, optional
            Subset of classes to prompt (default: all the model knows).
        seconds_per_class : float, optional
            Recorded seconds per class prompt (default ``[calibration] seconds_per_class``).
        repetitions : int, optional
            How often the class sequence is prompted.
        labels : bool, optional
            ``False``: a zero-label recalibration — the daemon collects ``[adapt] seconds``
            of live windows without prompting and fits the map without labels (then
            ``classes``, ``seconds_per_class`` and ``repetitions`` must be left out).
        ramp : bool, optional
            ``True``: a ramp session for the proportional speed — every class prompt asks
            for a slow ramp from rest to a strong contraction (default classes: every
            movement, default length ``[calibration] ramp_seconds_per_class``), and the
            speed calibration is re-derived from the ramps read through the live map.
            The map is kept; ``calibration_done`` carries ``purpose: "ramp"``.
        """
        return self.request("recalibrate", **self._given(
            classes=list(classes) if classes is not None else None,
            seconds_per_class=seconds_per_class, repetitions=repetitions, labels=labels,
            ramp=ramp))

    def train(self, classes=None, seconds_per_class=None, repetitions=None) -> dict:
        """Start a prompted training session of a new source model on the live stream.

        The daemon installs the model when the fit is done (``calibration_done`` event
        with ``purpose: "train"``); the reply only says the session started.

        Parameters
        ----------
        classes : sequence of str, optional
            Classes to prompt (default: ``[model] classes`` of the daemon's config).
        seconds_per_class : float, optional
            Default: ``[calibration] train_seconds_per_class``.
        repetitions : int, optional
        """
        return self.request("train", **self._given(
            classes=list(classes) if classes is not None else None,
            seconds_per_class=seconds_per_class, repetitions=repetitions))

    def label(self, name: str | None) -> dict:
        """Label the windows from now on as ``name`` (``None``: stop labelling).

        Parameters
        ----------
        name : str or None
            A class of the daemon's model.
        """
        return self.request("label", label=name)

    def fit(self, min_windows: int | None = None) -> dict:
        """Fit H from the manually labelled windows.

        Parameters
        ----------
        min_windows : int, optional
            Fewest labelled windows the fit accepts; default: the daemon's.
        """
        return self.request("fit", **self._given(min_windows=min_windows))

    def cancel(self) -> dict:
        """Abort a calibration; the old map stays live."""
        return self.request("cancel")

    def rollback(self, version: int | None = None) -> dict:
        """Make an earlier map live (default: the one before the live one).

        Parameters
        ----------
        version : int, optional
            The map version to put live.
        """
        return self.request("rollback", **self._given(version=version))

    def save(self) -> dict:
        """Persist the daemon's state now."""
        return self.request("save")

    def shutdown(self) -> dict:
        """Stop the daemon cleanly."""
        return self.request("shutdown")

    def subscribe(self, topics: Iterable[str] | None = ("pred",), conflate: bool = False,
                  timeout_s: float | None = None) -> Subscription:
        """Subscribe to published topics (``None``: all).

        Parameters
        ----------
        topics : iterable of str or None
        conflate : bool
            Keep only the newest message (``ZMQ_CONFLATE``); for control loops that
            want the latest prediction and nothing else.
        timeout_s : float, optional
            Default: the client's ``timeout_s``.
        """
        return Subscription(self._ctx, self.pub, topics, conflate,
                            self.timeout_s if timeout_s is None else timeout_s, self.curve)

    def close(self) -> None:
        """Close the control socket (idempotent)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
