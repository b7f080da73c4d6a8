"""The control socket: one JSON request in, exactly one JSON reply out.

A ROUTER socket rather than REP, for two reasons:

* **Oversized requests still get an answer.** ``ZMQ_MAXMSGSIZE`` makes libzmq drop
  a peer whose frame is larger than the limit *before* allocating it, but it
  drops the whole connection, so the client would only see a timeout. We therefore
  set ``ZMQ_MAXMSGSIZE`` to a *hard* limit well above the protocol limit
  (``hard_limit_bytes``, default ``max(4 * max_message_bytes, 1 MiB)``): requests
  between the two limits are received, refused with ``ok: false`` ("exceeds the
  limit"), and only absurd ones (a hostile peer; our :class:`~emtl_stream.io.client.Client`
  refuses to send them) cost the sender its connection without any allocation here.
* **A malformed envelope cannot wedge the socket.** REP enforces strict
  recv/send alternation and silently discards some malformed messages; with
  ROUTER we see every frame, answer multi-frame bodies with an error, and a
  reply to a vanished peer is simply dropped.

Every request gets exactly one reply: bad requests (see
:func:`~emtl_stream.io.protocol.parse_request`) get ``ok: false`` with the reason,
handler exceptions get ``ok: false`` with the exception's message (and are logged
with the traceback), unserialisable handler results get ``ok: false`` too.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import zmq

from ..errors import EmtlError, ProtocolError
from ..logs import logger
from . import protocol
from .protocol import Request
from .zmq_pub import CurveConfig, bind_server_socket, check_bind_address, release_curve_server

Handler = Callable[[Request], dict]


#: Refused requests are logged one by one (at INFO) at most this many times per
#: :data:`REFUSAL_LOG_S`; the rest only at DEBUG, and a hostile or buggy client's flood
#: ends in one summary line per interval instead of one line per request.
REFUSALS_LOGGED = 5
REFUSAL_LOG_S = 60.0


class _RefusalLog:
    """Rate-limited logging of refused requests with a periodic summary."""

    def __init__(self, limit: int = REFUSALS_LOGGED, interval_s: float = REFUSAL_LOG_S):
        self.limit, self.interval_s = int(limit), float(interval_s)
        self._start = time.monotonic()
        self._n = 0
        self._last = ""

    def note(self, text: str) -> None:
        """Log one refusal: in full while under the limit, else at DEBUG and counted."""
        self.flush()
        self._n += 1
        self._last = text
        if self._n <= self.limit:
            logger.info("%s", text)
        else:
            logger.debug("%s", text)

    def flush(self) -> None:
        """At the end of an interval, summarise the refusals not logged one by one."""
        now = time.monotonic()
        if now - self._start < self.interval_s:
            return
        quiet = self._n - self.limit
        if quiet > 0:
            logger.warning("%d more control requests refused in the last %.0f s were not "
                           "logged one by one (last: %s)", quiet, now - self._start,
                           self._last[:200])
        self._start, self._n = now, 0


class ControlServer:
    """Serve control requests with ``handler``.

    Parameters
    ----------
    address : str
        Bind address, e.g. ``"tcp://127.0.0.1:5557"`` (``:*`` picks a free port; see
        :attr:`address`).
    handler : callable
        ``handler(request) -> dict`` of reply fields (``ok: true`` and ``v`` are added).
        It may raise; the client then gets ``ok: false`` with the message. Returning
        ``{"ok": False, "error": "..."}`` is also an error reply.
    max_message_bytes : int
        Protocol limit; larger requests are refused with ``ok: false``.
    hard_limit_bytes : int, optional
        ``ZMQ_MAXMSGSIZE``: larger frames drop the sender's connection unread.
    curve : CurveConfig, optional
    context : zmq.Context, optional
    allow_remote : bool
        Permit a non-loopback bind without CURVE.

    Notes
    -----
    Two ways to run it, never both at once: call :meth:`poll_once` from your own loop
    (single thread, no locks; the daemon does this), or :meth:`start` a thread that
    owns the socket until :meth:`stop`. The handler runs in that thread.
    """

    def __init__(self, address: str, handler: Handler, *, max_message_bytes: int = 65536,
                 hard_limit_bytes: int | None = None, curve: CurveConfig | None = None,
                 context: zmq.Context | None = None, allow_remote: bool = False):
        check_bind_address(address, allow_remote=allow_remote, curve=curve, what="control")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}.")
        self.max_message_bytes = int(max_message_bytes)
        if self.max_message_bytes < 64:
            raise ValueError(f"max_message_bytes must be >= 64, got {max_message_bytes}.")
        self.hard_limit_bytes = int(hard_limit_bytes or max(4 * self.max_message_bytes, 1 << 20))
        if self.hard_limit_bytes < self.max_message_bytes:
            raise ValueError(f"hard_limit_bytes ({self.hard_limit_bytes}) must be >= "
                             f"max_message_bytes ({self.max_message_bytes}).")
        self.handler = handler
        self._ctx = context or zmq.Context.instance()
        sock, self._curve_ref = bind_server_socket(
            self._ctx, zmq.ROUTER, address, curve, "control server",
            [(zmq.MAXMSGSIZE, self.hard_limit_bytes)])
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.n_requests = 0
        self.n_errors = 0
        self.refusals = _RefusalLog()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        logger.info("control server bound to %s%s", self.address, " (CURVE)" if curve else "")

    # ------------------------------------------------------------------ one request
    def _answer(self, body: bytes) -> bytes:
        """Return the reply to one request body (never raises)."""
        try:
            request = protocol.parse_request(body, self.max_message_bytes)
        except ProtocolError as exc:
            self.n_errors += 1
            self.refusals.note(f"refused control request: {exc}")
            return protocol.reply_error(str(exc))
        except Exception as exc:  # a parser bug must still cost only this request
            self.n_errors += 1
            logger.error("control request of %d bytes could not be parsed", len(body),
                         exc_info=True)
            return protocol.reply_error(f"request could not be parsed ({type(exc).__name__}).")
        try:
            result = self.handler(request)
        except Exception as exc:  # a command failed: the client gets the reason
            self.n_errors += 1
            if isinstance(exc, (EmtlError, ValueError, LookupError)):
                # a refused request (bad state, unknown class or version): one line, rate
                # limited (a client's mistake, not the daemon's); the traceback at DEBUG
                self.refusals.note(f"control command {request.cmd!r} refused: {exc}")
                logger.debug("control command %r refused", request.cmd, exc_info=True)
            else:
                logger.warning("control command %r failed", request.cmd, exc_info=True)
            return protocol.reply_error(str(exc) or type(exc).__name__)
        try:
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not a dict")
            if "ok" in result:
                result = dict(result)
                ok = result.pop("ok")
                result.pop("v", None)
                if not ok:
                    self.n_errors += 1
                    return protocol.reply_error(str(result.get("error", "error")))
            return protocol.reply_ok(**result)
        except Exception as exc:  # the handler's bug, but the client still gets an answer
            self.n_errors += 1
            logger.error("control command %r: bad reply %r", request.cmd, result, exc_info=True)
            return protocol.reply_error(f"internal error building the reply to {request.cmd!r}: "
                                        f"{exc}")

    def _serve_one(self) -> None:
        frames = self._sock.recv_multipart(zmq.NOBLOCK)
        self.n_requests += 1
        # Envelope: routing frames up to an empty delimiter (REQ peers); a DEALER
        # without a delimiter has only its identity frame.
        try:
            split = frames.index(b"", 1) + 1
        except ValueError:
            split = 1
        envelope, body = frames[:split], frames[split:]
        if len(body) != 1:
            self.n_errors += 1
            reply = protocol.reply_error(f"a request must be exactly one frame holding a JSON "
                                         f"object, got {len(body)} frames.")
        else:
            reply = self._answer(body[0])
        try:
            self._sock.send_multipart(envelope + [reply], zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("control reply dropped: client %r not reachable", envelope[0])

    def poll_once(self, timeout_ms: int = 0, max_requests: int = 16) -> int:
        """Wait up to ``timeout_ms`` for requests; answer those queued (at most ``max_requests``).

        Parameters
        ----------
        timeout_ms : int
            Milliseconds to wait for the first request.
        max_requests : int
            Most requests answered in one call (the loop's other work waits meanwhile).

        Returns
        -------
        int
            Number of requests answered.
        """
        if self._sock is None:
            raise RuntimeError("control server is closed")
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise RuntimeError("control server runs in its own thread; do not call poll_once")
        n = 0
        self.refusals.flush()
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return 0
        while n < max_requests and self._sock.poll(0, zmq.POLLIN):
            try:
                self._serve_one()
            except zmq.Again:
                break
            n += 1
        return n

    # ------------------------------------------------------------------ thread variant
    def start(self, poll_ms: int = 50) -> "ControlServer":
        """Serve in a background thread until :meth:`stop`; returns self.

        Parameters
        ----------
        poll_ms : int
            Poll timeout of the thread's loop, in milliseconds.
        """
        if self._thread is not None:
            raise RuntimeError("control server already started")
        self._stop.clear()
        started = threading.Event()

        def run():
            started.set()
            while not self._stop.is_set():
                try:
                    self.poll_once(poll_ms)
                except zmq.ContextTerminated:
                    break
                except Exception:  # keep serving: one bad request must not end the thread
                    logger.exception("control server loop error")

        self._thread = threading.Thread(target=run, name="emtl-control", daemon=True)
        self._thread.start()
        if not started.wait(5.0):
            raise RuntimeError("control server thread did not start within 5 s")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread started by :meth:`start` (no-op otherwise).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the thread.
        """
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"control server thread did not stop within {timeout} s")
        self._thread = None

    def close(self) -> None:
        """Stop the thread if any, close the socket (idempotent)."""
        self.stop()
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._curve_ref:
            self._curve_ref = False
            release_curve_server(self._ctx)

    def __enter__(self) -> "ControlServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
