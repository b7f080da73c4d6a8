"""``emtl-stream ui``: one local web page for the patient and the operator.

The server is the standard library's :class:`http.server.ThreadingHTTPServer`. The
page has a handful of viewers (the patient's screen, the operator's), each holding
one Server-Sent Events connection, so a thread per connection is cheap, and the
daemon side is the blocking :class:`~emtl_stream.io.client.Client` anyway; an async
framework would add a dependency and an event loop for no gain.

Data flow (no second source of truth): a subscriber thread reads the daemon's
published ``pred``/``feat``/``event``/``prompt`` messages, a status thread asks the
daemon for ``status`` twice a second (stream health, map list, reachability), both
feed :class:`~emtl_stream.ui.view.ViewState`, and ``GET /events`` pushes the parts
that changed to every page (at most :data:`MAX_PUSH_HZ` pushes per second per page;
a slow page gets the newest values, not a backlog). Buttons ``POST`` to ``/api/*``,
which forwards one control request and returns the daemon's reply unchanged.

Endpoints: ``GET /`` (the page), ``GET /static/NAME``, ``GET /events`` (SSE),
``GET /api/state`` (the same parts as one JSON object), ``POST /api/recalibrate``,
``POST /api/rollback``, ``POST /api/cancel``. A POST must carry
``Content-Type: application/json`` and, if the browser sends an ``Origin``, come
from this page's own origin, and on a loopback server every request must name a
loopback ``Host``, so another web site open in the same browser cannot read the
stream or steer the daemon (the page is unauthenticated; the bind policy keeps it
local).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

from ..errors import ConfigError, ProtocolError
from ..io.client import Client, CurveClient
from ..io.zmq_pub import is_local_address
from ..logs import logger
from .view import ViewState

#: Pushes per second per page at most; the daemon publishes 20 windows/s by default.
MAX_PUSH_HZ = 20.0
#: Seconds between two ``status`` requests to the daemon.
STATUS_INTERVAL_S = 0.5
#: Reply timeout of those ``status`` requests: after it the page says "not reachable".
STATUS_TIMEOUT_S = 1.0
#: Reply timeout of the requests the buttons send.
COMMAND_TIMEOUT_S = 5.0
#: SSE comment sent after this many idle seconds, so a closed page is noticed.
KEEPALIVE_S = 10.0
#: Largest POST body accepted (the biggest legitimate one is a list of class names).
MAX_BODY_BYTES = 8192
#: Page connections served at once; more get 503 (each holds a thread).
MAX_STREAMS = 32

# Bounds of what a button may send (checked here, before the daemon sees it).
MAX_CLASSES, MAX_CLASS_NAME = 64, 64
MAX_SECONDS_PER_CLASS = 120.0
MAX_REPETITIONS = 20

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:port"`` for IPv6) into ``(host, port)``.

    Parameters
    ----------
    address : str
        ``host:port`` of the page.

    Raises
    ------
    ConfigError
        Not ``host:port`` with a port in 0..65535 (0 picks a free port).
    """
    if not isinstance(address, str) or ":" not in address:
        raise ConfigError(f"ui.address must look like '127.0.0.1:5558', got {address!r}.")
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"ui.address must look like '127.0.0.1:5558' (port 0..65535), got "
                          f"{address!r}.")
    return host, int(port)


def check_ui_bind(address: str, allow_remote: bool) -> tuple[str, int]:
    """Parse ``address`` and refuse a non-loopback host unless ``allow_remote``.

    The same policy as the daemon's sockets (:func:`~emtl_stream.io.zmq_pub.is_local_address`):
    the page has no login and its buttons steer the daemon, so it stays on loopback
    unless the operator says the network is trusted.

    Parameters
    ----------
    address : str
        ``host:port`` of the page (``[ui] address``).
    allow_remote : bool
        ``[ui] allow_remote``: the network is trusted.
    """
    host, port = parse_address(address)
    wrapped = f"[{host}]" if ":" in host else host
    if not allow_remote and not is_local_address(f"tcp://{wrapped}:{port}"):
        raise ConfigError(
            f"ui.address {address!r} is not loopback. The page has no login and its buttons "
            "steer the daemon; use 127.0.0.1:PORT, or set [ui] allow_remote = true if the "
            "network is trusted.")
    return host, port


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False):
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        raise _BadRequest(HTTPStatus.BAD_REQUEST,
                          f"{key} must be {'an integer' if integer else 'a number'}, got "
                          f"{type(value).__name__} {value!r}.")
    if not (math.isfinite(value) and lo <= value <= hi) or (not integer and value <= 0):
        raise _BadRequest(HTTPStatus.BAD_REQUEST,
                          f"{key} must be {'>' if not integer else '>='} {lo:g} and <= {hi:g}, "
                          f"got {value!r}.")
    return value


def recalibrate_fields(body: dict) -> dict:
    """Check a ``/api/recalibrate`` body; return the fields to forward to the daemon.

    Parameters
    ----------
    body : dict
        ``classes`` (1..64 names of at most 64 characters), ``seconds_per_class``
        (0 < s <= 120), ``repetitions`` (1..20), ``labels`` (bool; ``false`` asks for a
        zero-label recalibration), ``ramp`` (bool; ``true`` asks for a ramp session that
        recalibrates the proportional speed). All optional; nothing else is allowed.
    """
    unknown = sorted(set(body) - {"classes", "seconds_per_class", "repetitions", "labels",
                                  "ramp"})
    if unknown:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"unknown field(s) {unknown}.")
    out = {}
    if "classes" in body:
        classes = body["classes"]
        if (not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES
                or not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME
                           for c in classes)):
            raise _BadRequest(HTTPStatus.BAD_REQUEST,
                              f"classes must be a list of 1 to {MAX_CLASSES} class names.")
        out["classes"] = classes
    if "seconds_per_class" in body:
        out["seconds_per_class"] = _number(body, "seconds_per_class", 0.0,
                                           MAX_SECONDS_PER_CLASS)
    if "repetitions" in body:
        out["repetitions"] = _number(body, "repetitions", 1, MAX_REPETITIONS, integer=True)
    if "labels" in body:
        if not isinstance(body["labels"], bool):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "labels must be true or false.")
        if body["labels"] is False:
            out["labels"] = False  # true is the daemon's default: not sent
    if "ramp" in body:
        if not isinstance(body["ramp"], bool):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "ramp must be true or false.")
        if body["ramp"] is True:
            out["ramp"] = True  # false is the daemon's default: not sent
    return out


def rollback_fields(body: dict) -> dict:
    """Check a ``/api/rollback`` body: optional ``version`` (integer 0..2**31-1).

    Parameters
    ----------
    body : dict
        The request's JSON body.
    """
    unknown = sorted(set(body) - {"version"})
    if unknown:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"unknown field(s) {unknown}.")
    if "version" in body:
        return {"version": _number(body, "version", 0, 2**31 - 1, integer=True)}
    return {}


def cancel_fields(body: dict) -> dict:
    """Check a ``/api/cancel`` body: no fields.

    Parameters
    ----------
    body : dict
        The request's JSON body.
    """
    if body:
        raise _BadRequest(HTTPStatus.BAD_REQUEST, f"unknown field(s) {sorted(body)}.")
    return {}


_COMMANDS = {"recalibrate": recalibrate_fields, "rollback": rollback_fields,
             "cancel": cancel_fields}


def _static_files() -> dict[str, bytes]:
    """Every shipped asset, read once: ``{name: bytes}`` (no path from a request is opened)."""
    root = resources.files(__package__) / "static"
    return {p.name: p.read_bytes() for p in root.iterdir()
            if p.is_file() and "." + p.name.rsplit(".", 1)[-1] in _CONTENT_TYPES}


class UiServer:
    """The web page server and its link to one daemon.

    Parameters
    ----------
    control, pub : str
        The daemon's control and publisher addresses.
    address : str
        ``"host:port"`` to serve on (port 0: a free one; see :attr:`url`).
    allow_remote : bool
        Permit a non-loopback ``address``.
    curve : CurveClient, optional
        CURVE keys for the daemon's sockets.
    feature_names : sequence of str
        ``[features] names`` (the MAV entry is the channel activity bar).
    status_interval_s : float
        Seconds between two ``status`` requests.

    Examples
    --------
    >>> with UiServer("tcp://127.0.0.1:5557", "tcp://127.0.0.1:5556") as ui:  # doctest: +SKIP
    ...     print(ui.url)
    """

    def __init__(self, control: str, pub: str, address: str = "127.0.0.1:5558", *,
                 allow_remote: bool = False, curve: CurveClient | None = None,
                 feature_names=(), status_interval_s: float = STATUS_INTERVAL_S):
        self.host, self.port = check_ui_bind(address, allow_remote)
        self.allow_remote = bool(allow_remote)
        self.control, self.pub = control, pub
        self.view = ViewState(control, pub, feature_names)
        self.status_interval_s = float(status_interval_s)
        self._status_client = Client(control, pub, timeout_s=STATUS_TIMEOUT_S, curve=curve)
        self._command_client = Client(control, pub, timeout_s=COMMAND_TIMEOUT_S, curve=curve)
        self._sub_client = Client(control, pub, timeout_s=1.0, curve=curve)
        self._static = _static_files()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self._httpd: ThreadingHTTPServer | None = None

    @classmethod
    def from_config(cls, config, address: str | None = None, control: str | None = None,
                    pub: str | None = None) -> "UiServer":
        """Make a server for the daemon that ``config`` describes (``[zmq]``, ``[ui]``).

        Parameters
        ----------
        config : Config
            The daemon's configuration.
        address : str, optional
            ``host:port`` of the page; default ``[ui] address``.
        control, pub : str, optional
            The daemon's control and PUB addresses; default from ``[zmq]``.
        """
        return cls(control or config.zmq.control, pub or config.zmq.pub,
                   address or config.ui.address, allow_remote=config.ui.allow_remote,
                   curve=CurveClient.from_config(config.zmq),
                   feature_names=config.features.names)

    @property
    def url(self) -> str:
        """The page's address (with the real port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "UiServer":
        """Bind, then serve and follow the daemon in background threads."""
        handler = type("Handler", (_Handler,), {"ui": self})
        server_cls = ThreadingHTTPServer
        if ":" in self.host:
            server_cls = type("V6Server", (ThreadingHTTPServer,),
                              {"address_family": socket.AF_INET6})
        self._httpd = server_cls((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        for name, target in (("ui-http", self._httpd.serve_forever),
                             ("ui-sub", self._follow_messages),
                             ("ui-status", self._follow_status)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        logger.info("ui serving %s for the daemon at %s", self.url, self.control)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; open page connections are closed (the page reconnects later).

        Parameters
        ----------
        timeout : float
            Seconds to wait for the server's threads.
        """
        self._stop.set()
        with self.view.cond:
            self.view.cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        for c in (self._status_client, self._command_client, self._sub_client):
            c.close()

    def serve_forever(self) -> None:
        """Block until :meth:`stop` (from a signal handler or another thread)."""
        while not self._stop.wait(0.5):
            pass

    def __enter__(self) -> "UiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ daemon side
    def _follow_messages(self) -> None:
        # ZeroMQ reconnects a SUB socket by itself when the daemon comes back, so one
        # subscription lives as long as the server.
        with self._sub_client.subscribe(("pred", "feat", "event", "prompt")) as sub:
            while not self._stop.is_set():
                try:
                    got = sub.recv(timeout_s=0.25)
                    if got is not None:
                        self.view.on_message(*got)
                except Exception:  # a malformed message must not end the page's feed
                    logger.exception("ui: could not use a published message")

    def _follow_status(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self._status_client.status()
                if reply.get("ok"):
                    self.view.on_status(reply)
                else:
                    self.view.on_unreachable(f"status refused: {reply.get('error')}")
            except (TimeoutError, ConnectionError, ProtocolError) as exc:
                self.view.on_unreachable(str(exc))
            self.view.tick()
            self._stop.wait(self.status_interval_s)

    def command(self, name: str, body: dict) -> tuple[HTTPStatus, dict]:
        """Check a button's request and forward it; ``(http status, reply)``.

        A daemon reply (``ok`` true or false) is returned as is with 200; a request the
        ui refuses gets 400 and ``{"ok": false, "error": ...}``; an unreachable daemon 502.

        Parameters
        ----------
        name : str
            The button's command (``recalibrate``, ``rollback``, ``cancel``, ...).
        body : dict
            The request's JSON body.
        """
        fields = _COMMANDS[name](body)
        try:
            reply = self._command_client.request(name, **fields)
        except (TimeoutError, ConnectionError, ProtocolError) as exc:
            return HTTPStatus.BAD_GATEWAY, {"ok": False, "error": f"daemon not reachable: {exc}"}
        return HTTPStatus.OK, reply


class _Handler(BaseHTTPRequestHandler):
    ui: UiServer
    server_version = "emtl-stream-ui"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        logger.debug("ui %s - %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ helpers
    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"ok": False, "error": message})

    def _host_ok(self) -> bool:
        """Refuse a ``Host`` that is not loopback on a loopback server (DNS rebinding).

        A web site whose name its DNS re-points at 127.0.0.1 would otherwise be
        "same origin" with this page in the operator's browser and could read the
        stream or press the buttons.
        """
        if self.ui.allow_remote:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return True
        self._error(HTTPStatus.FORBIDDEN, f"host {host!r} is not served here; open the page "
                                          f"at {self.ui.url}.")
        return False

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.ui._static["index.html"], _CONTENT_TYPES[".html"])
        elif path.startswith("/static/") and path[8:] in self.ui._static:
            name = path[8:]
            self._send(HTTPStatus.OK, self.ui._static[name],
                       _CONTENT_TYPES["." + name.rsplit(".", 1)[-1]])
        elif path == "/events":
            self._events()
        elif path == "/api/state":
            seq, parts = self.ui.view.snapshot()
            self._json(HTTPStatus.OK, {"seq": seq, **parts})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page {path!r}.")

    def _events(self) -> None:
        if not self.ui._streams.acquire(blocking=False):
            self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                        f"too many open pages (at most {MAX_STREAMS}).")
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            # retry: how soon EventSource reconnects after this server goes away.
            self.wfile.write(b"retry: 1000\n\n")
            view, seen, last_push = self.ui.view, 0, 0.0
            min_gap = 1.0 / MAX_PUSH_HZ
            while not self.ui._stop.is_set():
                seq = view.wait(seen, KEEPALIVE_S)
                if self.ui._stop.is_set():
                    break
                if seq == seen:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                gap = min_gap - (time.monotonic() - last_push)
                if gap > 0:  # coalesce: whatever else changes meanwhile goes in this push
                    time.sleep(gap)
                seen, parts = view.snapshot(seen)
                data = json.dumps(parts, separators=(",", ":"))
                self.wfile.write(f"id: {seen}\nevent: parts\ndata: {data}\n\n".encode())
                self.wfile.flush()
                last_push = time.monotonic()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the page went away; EventSource comes back by itself if it wants
        finally:
            self.ui._streams.release()

    # ------------------------------------------------------------------ POST
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        name = path[5:] if path.startswith("/api/") else None
        try:
            if name not in _COMMANDS:
                raise _BadRequest(HTTPStatus.NOT_FOUND, f"no such command {path!r}.")
            self._check_origin()
            body = self._read_body()
            status, reply = self.ui.command(name, body)
            self._json(status, reply)
        except _BadRequest as exc:
            self._error(exc.status, str(exc))

    def _check_origin(self) -> None:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            # A cross-site form or fetch without a preflight cannot send this type.
            raise _BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                              "requests must be application/json.")
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and (host is None or urlsplit(origin).netloc != host):
            raise _BadRequest(HTTPStatus.FORBIDDEN,
                              f"requests from {origin!r} are not accepted; use the page served "
                              f"at http://{host}/.")

    def _read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required.") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            # Not read: the connection is closed instead of draining an arbitrary body.
            self.close_connection = True
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"request body of {length} bytes exceeds {MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}.") from None
        if not isinstance(body, dict):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "body must be a JSON object.")
        return body


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def main(args) -> int:
    """``emtl-stream ui``: serve the page until SIGINT/SIGTERM; returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``emtl-stream ui`` arguments.
    """
    import signal

    from ..config import load_config

    cfg = load_config(getattr(args, "config", None))
    ui = UiServer.from_config(cfg, address=args.address, control=args.control, pub=args.pub)
    ui.start()

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        ui._stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"emtl-stream ui: serving {ui.url} (patient view {ui.url}#patient) for the daemon "
          f"at {ui.control}", flush=True)
    try:
        ui.serve_forever()
    finally:
        ui.stop()
    return 0
