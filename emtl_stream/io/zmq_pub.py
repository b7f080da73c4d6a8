"""ZeroMQ publisher of ``pred``/``feat``/``event``/``prompt`` frames, and CURVE set-up.

Bind policy: a PUB or control socket binds to loopback (``tcp://127.0.0.1``,
``localhost``, ``::1``) or a local transport (``ipc://``, ``inproc://``) unless the
caller passes ``allow_remote=True`` or configures CURVE. Predictions drive a
prosthesis; an unencrypted, unauthenticated socket on a network interface would
let anyone on that network read (and, on the control socket, steer) it.

CURVE (:class:`CurveConfig`): the server socket gets the server key pair; when
``authorized_clients_dir`` is set, a ZAP authenticator (one per ZeroMQ context,
shared by the publisher and the control server) admits only clients whose public
key has a certificate in that folder (``zmq.auth.create_certificates`` format).
Without it, any client that knows the server's public key may connect (traffic is
still encrypted). Keys are Z85 strings (40 characters) or paths to certificate files.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import zmq

from ..logs import logger
from . import protocol

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_local_address(address: str) -> bool:
    """Return True for ``ipc://``/``inproc://`` and for ``tcp://`` on a loopback host.

    ``tcp://*:5556``, ``tcp://0.0.0.0:5556`` and interface names count as remote.

    Parameters
    ----------
    address : str
        A ZeroMQ endpoint.
    """
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest.split("]")[0] + "]"
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_bind_address(address: str, *, allow_remote: bool, curve: "CurveConfig | None",
                       what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when a non-local bind is not explicitly allowed.

    Parameters
    ----------
    address : str
        The endpoint to bind.
    allow_remote : bool
        ``[zmq] allow_remote``: the network is trusted.
    curve : CurveConfig or None
        CURVE keys; with them a remote bind is allowed.
    what : str
        Which socket, for the message (``"pub"``, ``"control"``).
    """
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"{what} address must look like 'tcp://127.0.0.1:5556', got {address!r}.")
    if is_local_address(address) or allow_remote or curve is not None:
        return
    raise ValueError(
        f"{what} address {address!r} is not loopback. Binding it would expose the daemon "
        "unencrypted and unauthenticated to the network; use tcp://127.0.0.1:PORT, configure "
        "CURVE keys ([zmq] curve_server_secret/public), or set [zmq] allow_remote = true if "
        "the network is trusted.")


# --------------------------------------------------------------------------- CURVE
def read_curve_key(value: str | bytes, which: str, name: str) -> bytes:
    """Read a CURVE key given directly (40 Z85 characters) or from a certificate file.

    Shared by the server side (:class:`CurveConfig`) and the client side
    (:class:`~emtl_stream.io.client.CurveClient`).

    Parameters
    ----------
    value : str or bytes
        The Z85 key itself, or the path of a ``zmq.auth`` certificate
        (``.key`` for a public key, ``.key_secret`` for a secret one).
    which : {"public", "secret"}
        Which key of a certificate file to return.
    name : str
        The setting's name, for the error message.

    Returns
    -------
    bytes
        The Z85-encoded key (40 bytes).

    Raises
    ------
    ValueError
        ``value`` is neither a 40-character key nor an existing file, or the
        certificate holds no ``which`` key.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii")
    if len(value) == 40 and not os.path.exists(value):
        return value.encode("ascii")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{name} must be a 40-character Z85 key or a certificate file, got "
                         f"{value!r} (no such file).")
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(path))
    key = public if which == "public" else secret
    if not key:
        raise ValueError(f"{name}: certificate {path} holds no {which} key"
                         + (" (use the .key_secret file)" if which == "secret" else "") + ".")
    return key


@dataclass(frozen=True)
class CurveConfig:
    """Server-side CURVE keys.

    Parameters
    ----------
    server_secret, server_public : str or bytes
        The server key pair (Z85, from ``zmq.curve_keypair()``) or certificate paths.
    authorized_clients_dir : str, optional
        Folder of client public-key certificates (``*.key``); only those clients are
        admitted. ``None``: any client with the server public key.
    """

    server_secret: str | bytes
    server_public: str | bytes
    authorized_clients_dir: str | None = None

    @classmethod
    def from_config(cls, zmq_config) -> "CurveConfig | None":
        """From a ``[zmq]`` config section; ``None`` when no server key is configured.

        Parameters
        ----------
        zmq_config : ZmqConfig
            The ``[zmq]`` config section.
        """
        if not zmq_config.curve_server_secret:
            return None
        return cls(zmq_config.curve_server_secret, zmq_config.curve_server_public,
                   zmq_config.curve_authorized_clients_dir or None)

    def keys(self) -> tuple[bytes, bytes]:
        """``(public, secret)`` as Z85 bytes."""
        return (read_curve_key(self.server_public, "public", "curve server_public"),
                read_curve_key(self.server_secret, "secret", "curve server_secret"))


class _AuthRegistry:
    """One ZAP authenticator per context, reference-counted by the sockets that need it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._auths: dict[int, list[Any]] = {}  # id(ctx) -> [authenticator, refs, location]

    def acquire(self, ctx: zmq.Context, location: str) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        location = str(Path(location).resolve())
        if not Path(location).is_dir():
            raise ValueError(f"curve authorized_clients_dir {location!r} is not a folder of "
                             "client certificates.")
        with self._lock:
            entry = self._auths.get(id(ctx))
            if entry is None:
                auth = ThreadAuthenticator(ctx, log=logger.getChild("zap"))
                auth.start()
                auth.configure_curve(domain="*", location=location)
                self._auths[id(ctx)] = [auth, 1, location]
                logger.info("CURVE: admitting clients with certificates in %s", location)
                return
            if entry[2] != location:
                raise ValueError(f"one ZeroMQ context can have one authenticator; it already "
                                 f"uses {entry[2]!r}, not {location!r}.")
            entry[1] += 1

    def release(self, ctx: zmq.Context) -> None:
        with self._lock:
            entry = self._auths.get(id(ctx))
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._auths[id(ctx)]
                entry[0].stop()


_AUTH = _AuthRegistry()


def apply_curve_server(sock: zmq.Socket, curve: CurveConfig) -> bool:
    """Make ``sock`` a CURVE server; returns True when it holds an authenticator reference.

    Must be called before ``bind``. Release the reference with
    :func:`release_curve_server` when the socket closes.

    Parameters
    ----------
    sock : zmq.Socket
        A socket not yet bound.
    curve : CurveConfig
        The server keys (and the authorised-clients folder, if any).
    """
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support; install pyzmq wheels or "
                           "remove the [zmq] curve_* keys.")
    public, secret = curve.keys()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    if curve.authorized_clients_dir:
        _AUTH.acquire(sock.context, curve.authorized_clients_dir)
        return True
    return False


def release_curve_server(ctx: zmq.Context) -> None:
    """Drop one authenticator reference taken by :func:`apply_curve_server`.

    Parameters
    ----------
    ctx : zmq.Context
        The context of the socket that took the reference.
    """
    _AUTH.release(ctx)


# --------------------------------------------------------------------------- publisher
def bind_server_socket(ctx: zmq.Context, socket_type: int, address: str,
                       curve: "CurveConfig | None", what: str, options=()) -> tuple:
    """Create, configure and bind a server socket; nothing leaks if the bind fails.

    Parameters
    ----------
    ctx : zmq.Context
    socket_type : int
        ``zmq.PUB``, ``zmq.ROUTER``, ...
    address : str
    curve : CurveConfig or None
    what : str
        Name used in the error message ("publisher", "control server").
    options : sequence of (int, value)
        Socket options set before the bind (``linger`` is always 0).

    Returns
    -------
    sock : zmq.Socket
    curve_ref : bool
        True when a CURVE authenticator reference was taken (release it on close).
    """
    curve_ref = False
    sock = ctx.socket(socket_type)
    try:
        sock.linger = 0
        for option, value in options:
            sock.setsockopt(option, value)
        if curve is not None:
            curve_ref = apply_curve_server(sock, curve)
        sock.bind(address)
    except Exception as exc:
        sock.close(linger=0)
        if curve_ref:
            release_curve_server(ctx)
        if isinstance(exc, zmq.ZMQError):
            raise OSError(f"{what} cannot bind {address!r}: {exc} (is another daemon running "
                          "on that port?)") from exc
        raise
    return sock, curve_ref


#: Largest message the publisher accepts from a subscriber (a subscription: one flag
#: byte and a topic prefix, bytes; also bounds the handshake, so CURVE needs about
#: 1 kB); a bigger one closes that connection.
MAX_SUBSCRIPTION_BYTES = 4096
#: Distinct topic prefixes tracked; beyond it every topic counts as wanted.
MAX_TRACKED_SUBSCRIPTIONS = 64


class Publisher:
    """Binds a publishing socket and publishes one-frame ``<topic> <json>`` messages.

    Parameters
    ----------
    address : str
        Bind address, e.g. ``"tcp://127.0.0.1:5556"``; ``tcp://127.0.0.1:*`` picks a free
        port (see :attr:`address`).
    context : zmq.Context, optional
        Default: ``zmq.Context.instance()``.
    curve : CurveConfig, optional
        Encrypt (and with ``authorized_clients_dir``, authenticate) subscribers.
    sndhwm : int
        Send high-water mark (messages per subscriber). A slow subscriber loses the
        oldest-undelivered messages beyond it instead of slowing the daemon; ``seq`` gaps
        tell it so.
    allow_remote : bool
        Permit a non-loopback bind without CURVE.

    Notes
    -----
    Thread safety: :meth:`publish`, :meth:`wants` and :meth:`close` take an internal
    lock, so any thread may publish (ZeroMQ sockets themselves are not thread-safe).
    Publishing never blocks: at the high-water mark messages are dropped, so the lock
    is held for microseconds.

    The socket is an XPUB: it behaves as PUB for subscribers and also reports their
    subscriptions, so :meth:`wants` tells a caller whether anyone listens to a topic
    before it builds a message nobody would receive.
    """

    def __init__(self, address: str, *, context: zmq.Context | None = None,
                 curve: CurveConfig | None = None, sndhwm: int = 1000,
                 allow_remote: bool = False):
        check_bind_address(address, allow_remote=allow_remote, curve=curve, what="publisher")
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        sock, self._curve_ref = bind_server_socket(
            self._ctx, zmq.XPUB, address, curve, "publisher",
            [(zmq.SNDHWM, int(sndhwm)), (zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)])
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.n_sent = 0
        self._prefixes: set[bytes] = set()  # the subscribers' topic prefixes
        self._untracked = False  # more distinct prefixes than MAX_TRACKED_SUBSCRIPTIONS
        self._wanted: dict[str, bool] = {}  # per topic, from the prefixes
        logger.info("publisher bound to %s%s", self.address, " (CURVE)" if curve else "")

    def publish(self, topic: str, obj: Mapping[str, Any]) -> None:
        """Encode and send one message (never blocks).

        Parameters
        ----------
        topic : str
            One of :data:`emtl_stream.io.protocol.TOPICS`.
        obj : mapping
            The message.

        Raises
        ------
        ProtocolError
            The message cannot be encoded (NaN, bad topic, ...); nothing is sent.
        RuntimeError
            The publisher is closed.
        """
        frame = protocol.encode_pub(topic, obj)
        with self._lock:
            if self._sock is None:
                raise RuntimeError("publisher is closed")
            try:
                self._sock.send(frame, zmq.NOBLOCK, copy=len(frame) < 4096)
            except zmq.Again:  # PUB drops rather than blocks; kept for exotic transports
                logger.debug("publish dropped a %s message (high-water mark)", topic)
                return
            self.n_sent += 1

    def wants(self, topic: str) -> bool:
        """Whether any subscriber currently receives ``topic``.

        Reads the subscription changes queued since the last call (never waits). A
        subscriber that has just connected may receive a topic's messages one call
        after it subscribed, as with any ZeroMQ subscription.

        Parameters
        ----------
        topic : str
            One of :data:`emtl_stream.io.protocol.TOPICS`.

        Returns
        -------
        bool
            False only when no subscriber's prefix matches the topic.
        """
        with self._lock:
            if self._sock is None:
                raise RuntimeError("publisher is closed")
            changed = False
            while True:
                try:
                    msg = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not msg or msg[0] not in (0, 1):
                    continue  # not a subscription (an XSUB peer may send anything)
                changed = True
                prefix = bytes(msg[1:])
                if msg[0] == 0:
                    self._prefixes.discard(prefix)
                elif len(self._prefixes) < MAX_TRACKED_SUBSCRIPTIONS:
                    self._prefixes.add(prefix)
                else:
                    self._untracked = True
            if changed:
                self._wanted.clear()
            wanted = self._wanted.get(topic)
            if wanted is None:
                frame_start = topic.encode("ascii") + b" "
                wanted = self._untracked or any(frame_start.startswith(p)
                                                for p in self._prefixes)
                self._wanted[topic] = wanted
            return wanted

    def close(self, linger: int = 0) -> None:
        """Close the socket (idempotent). ``linger`` ms to flush queued messages.

        Parameters
        ----------
        linger : int
            Milliseconds to flush queued messages.
        """
        with self._lock:
            if self._sock is None:
                return
            self._sock.close(linger=linger)
            self._sock = None
        if self._curve_ref:
            self._curve_ref = False
            release_curve_server(self._ctx)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._sock is None

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
