"""Handlers of the ``emtl-stream`` subcommands (everything but ``evaluate``).

Each takes the argparse namespace and returns an exit code; errors propagate to
:func:`emtl_stream.cli.main`, which turns them into one line on stderr (exit 2 for a
:class:`~emtl_stream.errors.ConfigError`, 1 otherwise). What a command tells the
user goes to stderr as ``emtl-stream COMMAND: ...``; its results go to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError


def _say(command: str, text: str) -> None:
    print(f"emtl-stream {command}: {text}", file=sys.stderr, flush=True)


def _config(args):
    from .config import load_config

    return load_config(getattr(args, "config", None))


def _client(args, cfg=None, timeout_s=None):
    from .io.client import Client, CurveClient

    cfg = cfg or _config(args)
    timeout = timeout_s or getattr(args, "timeout", None) or 5.0
    control, pub = args.control or cfg.zmq.control, args.pub or cfg.zmq.pub
    for name, addr in (("control", control), ("pub", pub)):
        # a malformed address is a configuration error (exit 2), not a runtime failure
        if not isinstance(addr, str) or "://" not in addr:
            raise ConfigError(f"{name} address {addr!r} is not a ZeroMQ endpoint like "
                              f"tcp://127.0.0.1:5557 (--{name} or [zmq] {name})")
    return Client(control=control, pub=pub, timeout_s=timeout,
                  curve=CurveClient.from_config(cfg.zmq))


def _check_ok(command: str, reply: dict, client=None) -> dict:
    """Return the reply of an accepted request; a refusal becomes a one-line failure (exit 1).

    With ``client``, a refusal for want of a stream also says why the daemon has none
    (its ``last_error``: a rate or channel mismatch, no matching stream).
    """
    if not reply.get("ok"):
        error = reply.get("error") or "refused"
        if client is not None and "stream" in error and "connected" in error:
            try:
                why = client.status().get("last_error")
            except (TimeoutError, ConnectionError):
                why = None
            if why and why not in error:
                error = f"{error}: {why}"
        raise RequestRefused(error)
    return reply


class RequestRefused(RuntimeError):
    """The daemon answered ``ok: false``; the message is its reason."""


# --------------------------------------------------------------------------- demo
def demo(args) -> int:
    """``emtl-stream demo``; ``--plot`` checks for matplotlib before anything runs.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments (as every command handler here).
    """
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'emtl_stream[plot]' "
                              "(or run the demo without --plot)") from None
    from .demo import main

    return main(args)


# --------------------------------------------------------------------------- the daemon
def run_daemon(args) -> int:
    """``emtl-stream run``: lock the state dir, start the daemon, say what it is doing.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    import signal
    import threading

    from .daemon.service import Daemon
    from .io.lock import StateDirLock
    from .io.zmq_pub import CurveConfig, check_bind_address
    from .logs import add_file_handler, set_log_level

    cfg = _config(args)
    if getattr(args, "state_dir", None):
        cfg = cfg.replace(state={"dir": args.state_dir})
    if not args.verbose:
        set_log_level(cfg.log.level)
    if cfg.log.file:
        add_file_handler(cfg.log.file)
    curve = CurveConfig.from_config(cfg.zmq)
    for what, address in (("publisher", cfg.zmq.pub), ("control", cfg.zmq.control)):
        try:
            check_bind_address(address, allow_remote=cfg.zmq.allow_remote, curve=curve, what=what)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    with StateDirLock(cfg.state.dir):
        daemon = Daemon(cfg)
        _describe_model(daemon, cfg)
        stop = threading.Event()

        def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _say("run", "warming up the kernels (the first run compiles them) ...")
            _start_quietly(daemon)
            _say("run", f"serving on {cfg.zmq.pub} (predictions, events, prompts) and "
                        f"{cfg.zmq.control} (control); state in {cfg.state.dir}; "
                        "Ctrl-C or `emtl-stream shutdown` stops")
            _watch_stream(daemon, cfg, stop)
        finally:
            daemon.stop()
            for s, h in old.items():
                signal.signal(s, h)
    _say("run", "stopped")
    return 0


def _start_quietly(daemon) -> None:
    """Run ``daemon.start()``, its failure reported once, by the command line.

    The daemon also logs it, which would print the same reason twice.
    """
    import logging

    from .logs import logger

    class _DropStartFailure(logging.Filter):
        def filter(self, record):
            return not record.getMessage().startswith("daemon start failed")

    drop = _DropStartFailure()
    logger.addFilter(drop)
    try:
        daemon.start(timeout=900.0)
    finally:
        logger.removeFilter(drop)


def _stream_query(cfg) -> str:
    s = cfg.stream
    parts = [f"{k} {v!r}" for k, v in (("name", s.name), ("source_id", s.source_id),
                                       ("type", s.type)) if v]
    return ", ".join(parts) or "any stream"


def _describe_model(daemon, cfg) -> None:
    bundle = daemon.bundle
    if bundle is None:
        _say("run", "no model: predictions start once a source model exists. Train one on "
                    "the live stream with `emtl-stream train --live`, or set [model] path "
                    "(EMTL_MODEL_PATH) to a file from `emtl-stream train`")
    else:
        _say("run", f"model: {', '.join(bundle.classes)} ({bundle.n_channels} ch @ "
                    f"{bundle.fs:g} Hz), map version {daemon.version} live")
    if not cfg.stream.name and not cfg.stream.source_id:
        _say("run", "[stream] name and source_id are empty: the daemon takes the first "
                    f"{cfg.stream.type or 'LSL'} stream it finds; pin yours with "
                    "EMTL_STREAM_NAME=... or EMTL_STREAM_SOURCE_ID=...")


def _watch_stream(daemon, cfg, stop) -> None:
    """Until ``stop`` or the daemon ends: report stream (dis)connections, once each.

    Reads the daemon's own flags: a ``status`` request every half second would wake
    its loop and list the state directory twice a second for one bit of news.
    """
    connected = None
    thread = getattr(daemon, "_thread", None)
    while not stop.wait(0.5):
        if thread is not None and not thread.is_alive():
            return  # a shutdown request
        now, desc = bool(daemon.connected), daemon.stream_desc
        if now == connected or (now and desc is None):
            continue
        if now:
            _say("run", f"stream {desc.name!r} connected: {desc.n_channels} ch @ "
                        f"{desc.rate:g} Hz")
        elif connected is None:
            _say("run", f"waiting for stream {_stream_query(cfg)} ...")
        else:
            _say("run", f"stream {desc.name!r} lost; waiting for it to come back ...")
        connected = now


# --------------------------------------------------------------------------- replay, record
def replay(args) -> int:
    """``emtl-stream replay FILE|--synthetic [--rate X] [--shift S] [--loop] [--name NAME]``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    from .sim.replay import run_replay

    if (args.file is None) == (not args.synthetic):
        raise ConfigError("give either a recording FILE or --synthetic (not both)")
    if args.file is not None:
        if args.follow_prompts:
            raise ConfigError("--follow-prompts needs --synthetic: a recording plays its own "
                              "labels and cannot perform prompted classes")
        if args.shift != round(args.shift):
            raise ConfigError(f"--shift {args.shift:g} is fractional; a recording can only be "
                              "rolled by whole electrodes (--synthetic takes any shift)")
        _load(args.file)  # a bad file is a usage error before any outlet opens
    elif args.channels < 1:
        raise ConfigError(f"--channels must be >= 1, got {args.channels}")
    return run_replay(args.file, rate=args.rate, shift=args.shift, loop=args.loop,
                      name=args.name, synthetic=args.synthetic, n_channels=args.channels,
                      fs=args.fs, seconds=args.seconds, follow_prompts=args.follow_prompts,
                      seed=args.seed, source_id=args.source_id,
                      announce=lambda text: _say("replay", f"streaming {text}"))


def _load(path):
    """Read a recording; unreadable or malformed files are configuration errors (exit 2)."""
    from .io.recordings import load_recording

    try:
        return load_recording(path)
    except FileNotFoundError:
        raise ConfigError(f"recording {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from None


def record(args) -> int:
    """``emtl-stream record OUT --seconds S``: EMG + Markers to a labelled recording.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    from .io.record import record_streams

    cfg = _config(args)
    name = args.stream if args.stream is not None else cfg.stream.name
    source_id = args.source_id if args.source_id is not None else cfg.stream.source_id
    if not name and not source_id:
        raise ConfigError("record needs the EMG stream: --stream NAME (or [stream] name / "
                          "source_id)")
    markers = args.markers if args.markers is not None else (
        f"{name}-markers" if name else "")
    if markers.lower() == "none":
        markers = ""
    out = Path(args.out)
    if out.suffix.lower() not in (".npz", ".xdf", ".csv"):
        raise ConfigError(f"record writes .npz, .xdf or .csv, got {out}")
    tty = sys.stderr.isatty()
    last = [0.0]

    def progress(done_s, n_markers, label):
        now = time.monotonic()
        if tty and now - last[0] < 0.1:
            return
        if not tty and now - last[0] < 5.0 and done_s < args.seconds:
            return
        last[0] = now
        line = (f"{done_s:5.1f} / {args.seconds:g} s, {n_markers} marker(s)"
                f"{', now ' + label if label else ''}")
        if tty:
            print(f"\r{line:<60}", end="", file=sys.stderr, flush=True)
        else:
            _say("record", line)

    rec = record_streams(name or None, source_id or None, cfg.stream.type or None,
                         markers or None, args.seconds, out,
                         resolve_timeout=args.resolve_timeout, progress=progress,
                         announce=lambda text: _say("record", text))
    if tty:
        print(file=sys.stderr)
    n_lab = int(np.sum(rec.labels >= 0)) if rec.labels is not None else 0
    classes = ", ".join(rec.class_names or []) or "none"
    print(f"wrote {out}: {rec.n_samples} samples x {rec.n_channels} ch @ {rec.fs:g} Hz, "
          f"{n_lab} labelled, classes {classes}")
    return 0


# --------------------------------------------------------------------------- train
def train(args) -> int:
    """``emtl-stream train FILE... --out MODEL`` or ``train --live``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    if args.live:
        if args.files:
            raise ConfigError("train --live takes no files: it records on the daemon's stream")
        return _train_live(args)
    if not args.files:
        raise ConfigError("give labelled recordings to train on (or --live for a prompted "
                          "session on a running daemon)")
    if not args.out:
        raise ConfigError("train needs --out MODEL.npz")
    if args.classes or args.seconds or args.repetitions:
        raise ConfigError("--classes, --seconds and --repetitions go with --live")
    if args.components_per_class < 1:
        raise ConfigError(f"--components-per-class must be >= 1, got {args.components_per_class}")
    from .daemon.bundle import filter_spec_from_config, train_bundle

    cfg = _config(args)
    spec = filter_spec_from_config(cfg.features)  # recorded, so the daemon filters alike
    reps = {int(r) for r in args.reps.split(",")} if args.reps else None
    Xs, ys, shape, extractor = [], [], None, None
    for f in args.files:
        X, y, f_shape, f_extractor = _training_windows(f, cfg, reps, spec)
        if shape is None:
            shape, extractor = f_shape, f_extractor
        elif shape != f_shape:
            raise ConfigError(f"{f} has {f_shape[0]} channels at {f_shape[1]:g} Hz; the first "
                              f"file had {shape[0]} at {shape[1]:g} Hz")
        Xs.append(X)
        ys.append(y)
    X, y = np.concatenate(Xs), np.concatenate(ys)
    if len(set(y.tolist())) < 2:
        raise ConfigError(f"the recordings hold {len(set(y.tolist()))} labelled class(es); a "
                          "source model needs at least two")
    from .model.speed import speed_kwargs

    bundle, model, note = train_bundle(
        X, y, extractor, cfg.features.window_ms, cfg.features.step_ms, shape[0], shape[1],
        kind=args.model, covariance_type=args.covariance_type,
        n_components_per_class=args.components_per_class, filter_spec=spec,
        speed_kwargs=speed_kwargs(cfg), files=[str(f) for f in args.files])
    if note:
        _say("train", note)
    bundle.save(args.out)
    acc = float(np.mean(model.predict(X) == y))
    print(f"wrote {args.out}: {len(X)} windows, {shape[0]} ch @ {shape[1]:g} Hz, classes "
          f"{bundle.classes}, training accuracy {acc:.3f}")
    return 0


def _training_windows(path, cfg, reps, spec):
    """``(X, y, (n_channels, fs), extractor)`` of one file: a recording or a saved burst.

    ``spec`` is the band-pass/notch filter the bundle records; recordings are filtered
    with it exactly as the daemon filters its stream.
    """
    from .daemon.bundle import make_filter
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import featurize

    burst = _load_burst(path, cfg)
    if burst is not None:
        return burst
    rec = _load(path)
    if rec.labels is None:
        raise ConfigError(f"{path} has no labels; train needs labelled recordings "
                          "(`emtl-stream record` writes them from a Markers stream)")
    shape = (rec.n_channels, rec.fs)
    extractor = FeatureExtractor(tuple(cfg.features.names), n_channels=shape[0], fs=shape[1],
                                 zc_threshold=cfg.features.zc_threshold,
                                 ssc_threshold=cfg.features.ssc_threshold)
    filt = make_filter(spec, shape[0], shape[1])  # as the daemon builds it from the bundle
    X, seg_index, offset = featurize(rec.emg, rec.fs, extractor, cfg.features.window_ms,
                                     cfg.features.step_ms, rec.seg_start, rec.seg_len,
                                     filter=filt)
    # a window's label is the label of its last sample; -1 (unlabelled) windows are left out
    stops = _window_stops(rec, extractor, cfg, seg_index, offset)
    y = rec.labels[stops - 1]
    keep = y >= 0
    if reps is not None and "rep" in rec.meta:
        keep &= np.isin(np.asarray(rec.meta["rep"])[stops - 1], list(reps))
    X, y = X[keep], y[keep]
    if rec.class_names is not None:
        y = np.asarray(rec.class_names)[y.astype(int)]
    return X, y, shape, extractor


def _load_burst(path, cfg):
    """Read a daemon's saved burst (features ``X`` and string ``labels``).

    Returns ``None`` when ``path`` is not one. Its JSON sidecar must say which
    features of which stream.
    """
    from .io.store import load_npz
    from .pipeline.features import FeatureExtractor

    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        arrays = load_npz(path)
    except Exception:  # not ours to judge here; the recording reader says what is wrong
        return None
    if "X" not in arrays or "labels" not in arrays or "emg" in arrays:
        return None
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    raw = arrays.get("raw")
    if "n_channels" not in meta and raw is not None and raw.ndim == 3 and raw.shape[1] > 0:
        # the raw windows say the stream's shape: window_ms of signal per window
        window_ms = float(meta.get("window_ms", cfg.features.window_ms))
        meta = dict(meta, n_channels=int(raw.shape[2]),
                    fs=round(raw.shape[1] * 1000.0 / window_ms, 6))
    if "features" in meta:
        extractor = FeatureExtractor.from_dict(meta["features"])
    elif "n_channels" in meta and "fs" in meta:
        extractor = FeatureExtractor(tuple(cfg.features.names), n_channels=int(meta["n_channels"]),
                                     fs=float(meta["fs"]), zc_threshold=cfg.features.zc_threshold,
                                     ssc_threshold=cfg.features.ssc_threshold)
    else:
        raise ConfigError(f"{path} is a calibration burst (feature windows, not EMG) whose "
                          f"{sidecar.name} does not say the stream's channels and rate; train "
                          "on a recording instead (`emtl-stream record`) or run a prompted "
                          "session (`emtl-stream train --live`)")
    X = np.asarray(arrays["X"], dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != extractor.n_features:
        raise ConfigError(f"{path}: X has shape {X.shape}, the burst's features give "
                          f"{extractor.n_features} per window")
    for key, expected in (("window_ms", cfg.features.window_ms),
                          ("step_ms", cfg.features.step_ms)):
        if key in meta and float(meta[key]) != float(expected):
            raise ConfigError(f"{path} was recorded with {key}={meta[key]}; the config has "
                              f"{expected} (set [features] {key} to match)")
    y = np.asarray(arrays["labels"]).astype(str)
    return X, y, (extractor.n_channels, float(extractor.fs)), extractor


def _window_stops(rec, extractor, cfg, seg_index, offset):
    """Absolute end sample (exclusive) of each window ``featurize`` kept.

    Uses featurize's own ``seg_index``/``offset``: windows holding NaN are dropped
    there, so re-deriving the positions would shift every later label.
    """
    from .pipeline.windowing import ms_to_samples

    win = ms_to_samples(cfg.features.window_ms, rec.fs, "window_ms")
    seg_start = rec.seg_start if rec.seg_start is not None else np.array([0])
    return np.asarray(seg_start, dtype=np.int64)[seg_index] + offset + win


def _train_live(args) -> int:
    """Prompted training session on a running daemon; it installs the model."""
    cfg = _config(args)
    client = _client(args, cfg)
    classes = _split(args.classes)
    with client.subscribe(("prompt", "event")) as sub:
        _check_ok("train", client.status())  # fail fast (timeout) without a daemon
        time.sleep(0.3)  # let the subscription reach the publisher (slow joiner)
        reply = _check_ok("train", client.train(classes=classes, seconds_per_class=args.seconds,
                                                repetitions=args.repetitions), client)
        done = _follow_session("train", sub, float(reply.get("duration_s") or 0))
    print(f"model trained: classes {', '.join(client.status().get('classes', []))}, "
          f"training accuracy {float(done.get('train_accuracy', float('nan'))):.3f}, "
          f"fit {float(done.get('fit_s', 0.0)):.2f} s; the daemon serves it as map version "
          f"{done.get('model')}")
    if args.out:
        _copy_daemon_model(client, args.out)
    return 0


def _copy_daemon_model(client, out) -> None:
    from ._atomic import atomic_write

    state_dir = Path(_check_ok("train", client.save()).get("state_dir", ""))
    src = state_dir / "source" / "model.npz"
    if not src.is_file():
        raise FileNotFoundError(f"the daemon's model {src} is not readable from here (is the "
                                "daemon on another machine?); --out needs its state folder")
    data = src.read_bytes()
    atomic_write(Path(out), lambda fh: fh.write(data))
    print(f"wrote {out} (a copy of {src})")


def _split(text):
    """``a,b`` → ``["a", "b"]``; None when not given; an empty list is a usage error."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--classes needs comma-separated class names, got {text!r}")
    return names


# --------------------------------------------------------------------------- prompted sessions
class _Progress:
    """Prompt display for the command line.

    On a terminal one line redrawn at most every 0.1 s; otherwise a plain line per
    prompt change (the daemon publishes prompts far more often).
    """

    MIN_REDRAW_S = 0.1

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.key = None
        self.last_draw = 0.0
        self.dirty = False

    def prompt(self, msg: dict) -> None:
        key = (msg.get("step"), msg.get("class"))
        left = float(msg.get("remaining_s") or 0.0)
        label = f"[{msg.get('step'):>2}/{msg.get('of')}] {msg.get('class')}"
        if not self.tty:
            if key != self.key:
                print(f"{label} ({left:.1f} s)", file=self.stream, flush=True)
            self.key = key
            return
        now = time.monotonic()
        if key == self.key and now - self.last_draw < self.MIN_REDRAW_S:
            return
        if key != self.key and self.key is not None:
            print(file=self.stream)
        self.key, self.last_draw, self.dirty = key, now, True
        bar_len = 20
        filled = bar_len - min(bar_len, int(round(left * 4)))
        print(f"\r{label:<24} [{'#' * filled}{'.' * (bar_len - filled)}] {left:4.1f} s",
              end="", file=self.stream, flush=True)

    def end(self) -> None:
        if self.tty and self.dirty:
            print(file=self.stream, flush=True)
        self.dirty = False


def _follow_session(command: str, sub, duration_s: float) -> dict:
    """Show prompts until ``calibration_done`` (returned) or ``calibration_failed`` (raised)."""
    progress = _Progress()
    deadline = time.monotonic() + duration_s + 60.0
    try:
        while time.monotonic() < deadline:
            msg = sub.recv(timeout_s=1.0)
            if msg is None:
                continue
            topic, obj = msg
            if topic == "prompt":
                progress.prompt(obj)
            elif topic == "event":
                kind = obj.get("kind")
                if kind == "calibration_done":
                    return obj
                if kind == "calibration_failed":
                    progress.end()
                    raise RequestRefused(obj.get("reason") or "calibration failed")
    finally:
        progress.end()
    raise TimeoutError(f"no result from the daemon within {duration_s + 60:.0f} s")


def recalibrate(args) -> int:
    """``emtl-stream recalibrate``: prompts with a countdown; 0 once the new H is live.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    no_labels = bool(getattr(args, "no_labels", False))
    if no_labels and (args.classes or args.seconds is not None or args.repetitions is not None):
        raise ConfigError("--no-labels takes no --classes, --seconds or --repetitions "
                          "([adapt] seconds sets the collection's length)")
    ramp = bool(getattr(args, "ramp", False))
    if ramp and no_labels:
        raise ConfigError("--ramp and --no-labels cannot be combined: a ramp session is "
                          "prompted; choose one")
    client = _client(args)
    with client.subscribe(("prompt", "event")) as sub:
        time.sleep(0.3)  # let the subscription reach the publisher (slow joiner)
        if no_labels:
            reply = _check_ok("recalibrate", client.recalibrate(labels=False), client)
            _say("recalibrate", f"collecting {float(reply.get('duration_s') or 0):g} s of live "
                                "windows without labels; keep using the hand as usual")
        else:
            reply = _check_ok("recalibrate", client.recalibrate(
                classes=_split(args.classes), seconds_per_class=args.seconds,
                repetitions=args.repetitions, ramp=True if ramp else None), client)
            if ramp:
                _say("recalibrate", "ramp session: at each movement prompt start relaxed and "
                                    "contract slowly harder, reaching a strong contraction as "
                                    "the countdown ends")
        done = _follow_session("recalibrate", sub, float(reply.get("duration_s") or 0))
    if done.get("purpose") == "ramp":
        sp = done.get("speed") or {}
        scaled = ", ".join(f"{c} {lo:.3g}..{hi:.3g}" for c, lo, hi, in zip(
            sp.get("classes", []), sp.get("low", []), sp.get("high", [])))
        print(f"speed calibration live (map {done.get('model')} kept): amplitude from speed 0 "
              f"to 1 per class: {scaled}", file=sys.stderr)
        return 0
    parts = [f"new map live: version {done.get('model')}"]
    if done.get("roll") is not None:
        parts.append(f"roll {done['roll']}")
    if done.get("objective") is not None:
        obj = f"objective {float(done['objective']):.4g}"
        if done.get("previous_objective") is not None:
            obj += f" (was {float(done['previous_objective']):.4g})"
        parts.append(obj)
    if done.get("fit_s") is not None:
        parts.append(f"fit {1000 * float(done['fit_s']):.1f} ms")
    print(", ".join(parts), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- client verbs
def status(args) -> int:
    """``emtl-stream status``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    reply = _client(args).status()
    if args.json or not reply.get("ok"):
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    s = reply["stream"]
    classes = ", ".join(reply.get("classes") or []) or "none"
    print(f"state {reply['state']}  model {reply['model']}  classes {classes}")
    if s.get("connected"):
        print(f"stream {s['name']} ({s['channels']} ch @ {s['rate']:g} Hz) connected")
    else:
        why = s.get("reason") or reply.get("last_error") or "no matching stream found yet"
        print(f"stream {s.get('name') or '(any)'} NOT connected: {why}")
    maps = reply.get("maps")
    print(f"windows {reply['windows']}  dropped {reply['dropped']}  uptime "
          f"{reply['uptime_s']:.0f} s" + (f"  maps {maps}" if maps is not None else ""))
    return 0


def rollback(args) -> int:
    """``emtl-stream rollback [VERSION]``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    client = _client(args)
    if args.version is None:
        st = _check_ok("rollback", client.status())
        maps = st.get("maps")
        if st.get("model") is None:
            raise RequestRefused("no model yet, so no maps to roll back to (train one first)")
        if maps is not None and not [v for v in maps if v < st["model"]]:
            raise RequestRefused(f"map {st['model']} is the first map; there is none before it "
                                 f"to roll back to (maps: {maps})")
    reply = _check_ok("rollback", client.rollback(args.version))
    if reply.get("changed") is False:
        print(f"map {reply['model']} is already live; nothing changed")
        return 0
    print(f"map {reply['model']} live (was {reply['previous']})")
    return 0


def label(args) -> int:
    """``emtl-stream label CLASS|none``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    name = None if args.label.lower() in ("none", "stop") else args.label
    reply = _check_ok("label", _client(args).label(name))
    print(f"labelling windows as {name}" if name else "labelling stopped",
          f"({reply.get('windows', 0)} labelled so far)")
    return 0


def fit(args) -> int:
    """``emtl-stream fit``: fit H on the labelled windows, wait for the result.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    client = _client(args)
    with client.subscribe(("event",)) as sub:
        time.sleep(0.3)
        _check_ok("fit", client.fit(min_windows=args.min_windows))
        done = _follow_session("fit", sub, 0.0)
    print(f"new map live: version {done.get('model')}", file=sys.stderr)
    return 0


def cancel(args) -> int:
    """``emtl-stream cancel``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    reply = _check_ok("cancel", _client(args).cancel())
    print("calibration cancelled" if reply.get("cancelled") else "nothing to cancel",
          f"(state {reply.get('state')})")
    return 0


def save(args) -> int:
    """``emtl-stream save``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    reply = _check_ok("save", _client(args).save())
    print(f"saved: map {reply.get('model')} live, state in {reply.get('state_dir')}")
    return 0


def shutdown(args) -> int:
    """``emtl-stream shutdown``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    _check_ok("shutdown", _client(args).shutdown())
    print("daemon stopping")
    return 0


def subscribe(args) -> int:
    """``emtl-stream subscribe [TOPIC...]``: one JSON line per message.

    Without a daemon this fails after ``--timeout`` (default 5 s); with ``--timeout``
    given, silence that long after the last message also ends it (exit 1).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    client = _client(args, timeout_s=args.timeout or 5.0)
    n = 0
    with client.subscribe(tuple(args.topics)) as sub:
        client.status()  # TimeoutError naming the address when no daemon answers
        while args.count == 0 or n < args.count:
            msg = sub.recv(timeout_s=args.timeout or 1.0)
            if msg is None:
                if args.timeout:
                    raise TimeoutError(f"no {'/'.join(args.topics)} message from {client.pub} "
                                       f"within {args.timeout:g} s")
                continue
            print(msg[0], json.dumps(msg[1]), flush=True)
            n += 1
    return 0


def warmup(args) -> int:
    """``emtl-stream warmup``: compile or load every kernel; prints the times.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    from .daemon.warmup import clear_cache, warm_up_for

    if getattr(args, "clear_cache", False):
        print(f"removed {len(clear_cache())} cached kernel file(s)")
    t = warm_up_for(_config(args))
    print(" ".join(f"{k}={v:.3f}s" for k, v in t.items()))
    return 0


def bench(args) -> int:
    """``emtl-stream bench``: run the benchmark scripts in tools/ (repository checkout).

    Parameters
    ----------
    args : argparse.Namespace
        The parsed subcommand arguments.
    """
    import subprocess

    tools = Path(__file__).resolve().parents[1] / "tools"
    scripts = sorted(tools.glob("bench_*.py"))
    if not scripts:
        raise ConfigError(f"no tools/bench_*.py next to the package ({tools}); "
                          "run from a repository checkout")
    rc = 0
    for script in scripts:
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"$ {' '.join(cmd)}", flush=True)
        rc |= subprocess.call(cmd)
    return 1 if rc else 0
