"""Fixtures for daemon integration tests: real LSL, real ZeroMQ, the real Daemon.

Everything is per test (function scope) because a daemon start costs about 0.2 s
with a warm numba cache: each test gets its own synthetic armband replayer (unique
``source_id``), its own free loopback ports and its own state directory, so tests
cannot see each other's streams or state. Only the offline-trained source model is
shared (session scope; it is never mutated).

The source model is trained *offline*, without LSL: a :class:`SyntheticArmband`
with the same seed as the live replayer generates about 2 s per class, features
come from :func:`~emtl_stream.pipeline.offline.featurize`, and a tied
:class:`LabelledGMM` is wrapped by :func:`make_bundle`. The live stream therefore
comes from the same muscles and electrodes as the training data, and only noise
differs. 500 Hz keeps the generator and the features cheap.

The plain helpers (``make_source``, ``daemon_config``, ``score`` ...) are also
imported by ``tests/test_cli.py`` (``from daemon.conftest import ...``).
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass

import numpy as np
import pytest
from lsl_helpers import unique_id  # also sets LSL ResolveScope = link

from emtl_stream.config import load_config
from emtl_stream.daemon.bundle import fit_source_model, make_bundle
from emtl_stream.daemon.service import Daemon
from emtl_stream.io.client import Client
from emtl_stream.sim.replay import Replayer
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.pipeline.offline import featurize
from emtl_stream.sim.synthetic import SyntheticArmband

FS = 500.0
N_CHANNELS = 8
SEED = 5
WINDOW_MS, STEP_MS = 200.0, 50.0
FEATURES = ("mav", "wl", "zc", "ssc")
# A window is scored only if the class did not change during it or during the
# muscle's activation lag before it (LAG_S = 60 ms in the generator).
STEADY_S = WINDOW_MS / 1000.0 + 0.15


# --------------------------------------------------------------------------- plain helpers
def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


# Ports are handed out below the kernel's ephemeral range, never twice per session.
# Asking the kernel for port 0 would return an ephemeral port: between closing that
# probe and the daemon's bind, any outgoing connection (a ZeroMQ client, LSL) may be
# given the same port, or the next probe may return it again for the other socket,
# and the daemon then fails with "Address already in use".
_PORT_LOW = 20000
_PORT_HIGH = min(_ephemeral_range()[0], 32768) - 1
_next_port = [_PORT_LOW + random.Random().randrange(_PORT_HIGH - _PORT_LOW)]
_ports_given: set[int] = set()


def free_port() -> int:
    """A free loopback TCP port, outside the ephemeral range and new to this session."""
    span = _PORT_HIGH - _PORT_LOW
    for _ in range(span):
        port = _next_port[0]
        _next_port[0] = _PORT_LOW + (port + 1 - _PORT_LOW) % span
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free loopback port left below the ephemeral range")


def armband(n_channels: int = N_CHANNELS, fs: float = FS, seed: int = SEED) -> SyntheticArmband:
    """The synthetic armband every test streams (same seed as the source model)."""
    return SyntheticArmband(n_channels=n_channels, fs=fs, seed=seed)


def make_source(n_channels: int = N_CHANNELS, fs: float = FS, seed: int = SEED,
                seconds_per_class: float = 2.0):
    """Train a source model offline (no LSL); returns ``(bundle, model, X, y)``."""
    arm = armband(n_channels, fs, seed)
    ext = FeatureExtractor(FEATURES, n_channels=n_channels, fs=fs)
    Xs, ys = [], []
    settle = int(0.3 * fs)  # drop the activation transition after each class change
    for cls in arm.class_names:
        emg = arm.generate(settle + int(seconds_per_class * fs), cls)[settle:]
        X, _, _ = featurize(emg, fs, ext, WINDOW_MS, STEP_MS)
        Xs.append(X)
        ys += [cls] * len(X)
    X, y = np.vstack(Xs), np.asarray(ys)
    model = fit_source_model(X, y, kind="lgmm", covariance_type="tied")
    bundle = make_bundle(model, ext, WINDOW_MS, STEP_MS, n_channels, fs, source="test armband")
    return bundle, model, X, y


def daemon_config(state_dir, source_id: str, pub: str | None = None, control: str | None = None,
                  **extra):
    """Config with free loopback ports, a tmp state dir and a short calibration.

    ``extra`` adds ``EMTL_<SECTION>_<KEY>`` overrides as raw TOML values.
    """
    pub = pub or f"tcp://127.0.0.1:{free_port()}"
    control = control or f"tcp://127.0.0.1:{free_port()}"
    env = {
        "EMTL_STREAM_SOURCE_ID": f'"{source_id}"',
        "EMTL_STREAM_NAME": '""',
        "EMTL_ZMQ_PUB": f'"{pub}"',
        "EMTL_ZMQ_CONTROL": f'"{control}"',
        "EMTL_STATE_DIR": f'"{state_dir}"',
        "EMTL_CALIBRATION_SECONDS_PER_CLASS": "0.6",
        "EMTL_CALIBRATION_LEAD_IN_S": "0.2",
        "EMTL_CALIBRATION_REST_S": "0.2",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return load_config(None, env=env)


def wait_for(sub, pred, timeout_s: float, seen: list | None = None):
    """Receive until ``pred(topic, msg)`` holds; returns the message or fails the test.

    Every message received on the way is appended to ``seen`` (if given).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = sub.recv(timeout_s=min(0.5, max(deadline - time.monotonic(), 0.01)))
        if got is None:
            continue
        if seen is not None:
            seen.append(got)
        if pred(*got):
            return got[1]
    pytest.fail(f"no matching message within {timeout_s} s")


def wait_joined(sub, timeout_s: float = 10.0, seen: list | None = None) -> dict:
    """Return the first prediction ``sub`` receives (it must subscribe to ``pred``).

    ZeroMQ drops what a PUB socket sends before a SUB has joined. A streaming daemon
    publishes a prediction every window, so the first one received proves that the
    subscription is in place: a wait that no sleep can guarantee.
    """
    return wait_for(sub, lambda topic, m: topic == "pred", timeout_s, seen)


def wait_joined_idle(client, sub, label: str, timeout_s: float = 10.0) -> dict:
    """Make an idle daemon publish until ``sub`` (subscribed to ``event``) hears it.

    With no stream there is no prediction to prove the subscription (see
    :func:`wait_joined`), so the probe asks for one: ``label`` then ``fit`` with no
    labelled window fails and publishes ``calibration_failed``, again until one
    arrives. Returns that event; the daemon is idle again afterwards.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client.label(label)
        assert client.request("fit")["ok"] is False
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            got = sub.recv(timeout_s=0.05)
            if got and got[0] == "event" and got[1].get("kind") == "calibration_failed":
                return got[1]
    pytest.fail(f"no calibration_failed event within {timeout_s} s")


def wait_event(sub, kinds, timeout_s: float, seen: list | None = None) -> dict:
    """Wait for an ``event`` of one of ``kinds`` (a str or a tuple)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return wait_for(sub, lambda topic, m: topic == "event" and m.get("kind") in kinds,
                    timeout_s, seen)


def collect(sub, seconds: float, seen: list | None = None) -> list:
    """Every message received during ``seconds``."""
    seen = [] if seen is None else seen
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = sub.recv(timeout_s=max(deadline - time.monotonic(), 0.01))
        if got is not None:
            seen.append(got)
    return seen


def steady_truth(player: Replayer, t: float):
    """Class performed during the whole window ending at ``t`` (``None`` if it changed)."""
    a, b = player.labels_at([t, t - STEADY_S])
    return a if a == b else None


def accuracy(player: Replayer, preds) -> tuple[float, int]:
    """Fraction of steady-class ``pred`` messages whose label is the performed class."""
    hits = n = 0
    for msg in preds:
        truth = steady_truth(player, msg["t"])
        if truth is None:
            continue
        n += 1
        hits += msg["label"] == truth
    return hits / max(n, 1), n


def score(player: Replayer, sub, classes, hold_s: float = 0.6) -> tuple[float, int]:
    """Make the armband perform every class for ``hold_s``; accuracy of the predictions."""
    preds = []
    for cls in classes:
        player.set_class(cls)
        for topic, msg in collect(sub, hold_s):
            if topic == "pred":
                preds.append(msg)
    return accuracy(player, preds)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def source():
    """``(bundle, model, X, y)`` of the offline-trained 8 x 500 Hz source model."""
    return make_source()


@dataclass
class Live:
    """One running daemon with its replayer and client."""

    daemon: Daemon
    player: Replayer
    client: Client
    config: object
    state_dir: object
    source_id: str
    classes: list

    @property
    def pub(self) -> str:
        return self.config.zmq.pub

    @property
    def control(self) -> str:
        return self.config.zmq.control


@pytest.fixture
def start_player():
    """Factory: start a synthetic (or recording) replayer; all are stopped at teardown."""
    players = []

    def start(source_id: str, source=None, **kw) -> Replayer:
        player = Replayer(source if source is not None else armband(), name="emtl-test",
                          source_id=source_id, **kw)
        players.append(player)
        return player.start()

    yield start
    for p in players:
        p.stop()


@pytest.fixture
def start_daemon():
    """Factory: start a Daemon (``Daemon(config, bundle=...)``); all are stopped at teardown."""
    daemons = []

    def start(config, bundle=None) -> Daemon:
        d = Daemon(config, bundle=bundle)
        daemons.append(d)
        return d.start(timeout=60.0)

    yield start
    for d in daemons:
        d.stop(timeout=10.0)
        assert d._thread is None or not d._thread.is_alive(), "daemon loop did not stop"


@pytest.fixture
def live(tmp_path, source, start_player, start_daemon):
    """A daemon serving the source model to a prompt-following synthetic armband.

    Returns once the stream is connected and the first prediction was published.
    """
    bundle = source[0]
    sid = unique_id("daemon")
    pub = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(tmp_path / "state", sid, pub=pub)
    player = start_player(sid, follow_prompts=pub)
    daemon = start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    with client.subscribe(("pred",)) as sub:
        wait_for(sub, lambda topic, m: topic == "pred", 20.0)
    yield Live(daemon, player, client, config, tmp_path / "state", sid, list(bundle.classes))
    client.close()
