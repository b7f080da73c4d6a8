"""Handlers of the ``emtl-stream`` subcommands (everything but ``demo`` and ``evaluate``).

Each takes the argparse namespace and returns an exit code; errors propagate to
:func:`emtl_stream.cli.main`, which turns them into one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError


def _config(args):
    from .config import load_config

    return load_config(getattr(args, "config", None))


def _client(args):
    from .io.client import Client, CurveClient

    cfg = _config(args)
    return Client(control=args.control or cfg.zmq.control, pub=args.pub or cfg.zmq.pub,
                  timeout_s=args.timeout, curve=CurveClient.from_config(cfg.zmq))


def run_daemon(args) -> int:
    """``emtl-stream run [--config FILE]``."""
    from .daemon.service import run
    from .logs import add_file_handler, set_log_level

    cfg = _config(args)
    if not args.verbose:
        set_log_level(cfg.log.level)
    if cfg.log.file:
        add_file_handler(cfg.log.file)
    return run(cfg)


def replay(args) -> int:
    """``emtl-stream replay FILE|--synthetic [--rate X] [--shift S] [--loop] [--name NAME]``."""
    from .io.replay import run_replay

    if (args.file is None) == (not args.synthetic):
        raise ConfigError("give either a recording FILE or --synthetic (not both)")
    return run_replay(args.file, rate=args.rate, shift=args.shift, loop=args.loop,
                      name=args.name, synthetic=args.synthetic, n_channels=args.channels,
                      fs=args.fs, seconds=args.seconds, follow_prompts=args.follow_prompts)


def train(args) -> int:
    """``emtl-stream train FILE... --out MODEL``: features + source model in one file."""
    from .daemon.bundle import fit_source_model, make_bundle
    from .io.recordings import load_recording
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import featurize

    cfg = _config(args)
    reps = {int(r) for r in args.reps.split(",")} if args.reps else None
    Xs, ys, shape = [], [], None
    for f in args.files:
        rec = load_recording(f)
        if rec.labels is None:
            raise ConfigError(f"{f} has no labels; train needs labelled recordings")
        if shape is None:
            shape = (rec.emg.shape[1], rec.fs)
        elif shape != (rec.emg.shape[1], rec.fs):
            raise ConfigError(f"{f} has {rec.emg.shape[1]} channels at {rec.fs} Hz; the first file "
                              f"had {shape[0]} at {shape[1]} Hz")
        extractor = FeatureExtractor(tuple(cfg.features.names), n_channels=shape[0], fs=shape[1],
                                     zc_threshold=cfg.features.zc_threshold,
                                     ssc_threshold=cfg.features.ssc_threshold)
        X, seg_index, _ = featurize(rec.emg, rec.fs, extractor, cfg.features.window_ms,
                                    cfg.features.step_ms, rec.seg_start, rec.seg_len)
        # a window's label is the label of its last sample
        stops = _window_stops(rec, extractor, cfg, seg_index)
        y = rec.labels[stops - 1]
        keep = np.ones(len(X), bool)
        if reps is not None and "rep" in rec.meta:
            keep = np.isin(np.asarray(rec.meta["rep"])[stops - 1], list(reps))
        Xs.append(X[keep])
        ys.append(y[keep])
    X, y = np.concatenate(Xs), np.concatenate(ys)
    names = None
    if rec.class_names is not None:
        names = np.asarray(rec.class_names)
        y = names[y.astype(int)]
    model = fit_source_model(X, y, kind=args.model, covariance_type=args.covariance_type,
                             n_components_per_class=args.components_per_class)
    from .daemon.shift import heldout_reference  # detector level for a cold start

    ref = heldout_reference(lambda Xa, ya: fit_source_model(
        Xa, ya, kind=args.model, covariance_type=args.covariance_type,
        n_components_per_class=args.components_per_class), X, y)
    bundle = make_bundle(model, extractor, cfg.features.window_ms, cfg.features.step_ms,
                         shape[0], shape[1], files=[str(f) for f in args.files],
                         shift_reference=ref)
    bundle.save(args.out)
    acc = float(np.mean(model.predict(X) == y))
    print(f"wrote {args.out}: {len(X)} windows, classes {bundle.classes}, "
          f"training accuracy {acc:.3f}")
    return 0


def _window_stops(rec, extractor, cfg, seg_index):
    """Absolute end sample of each offline window (same order as ``featurize``)."""
    from .pipeline.offline import segment_windows

    win = int(round(cfg.features.window_ms * rec.fs / 1000.0))
    step = int(round(cfg.features.step_ms * rec.fs / 1000.0))
    seg_start = rec.seg_start if rec.seg_start is not None else np.array([0])
    seg_len = rec.seg_len if rec.seg_len is not None else np.array([len(rec.emg)])
    _, seg_idx, offset = segment_windows(rec.emg, seg_start, seg_len, win, step)
    return np.asarray(seg_start)[seg_idx] + offset + win


def recalibrate(args) -> int:
    """``emtl-stream recalibrate``: prompts with a countdown; 0 once the new H is live."""
    client = _client(args)
    classes = args.classes.split(",") if args.classes else None
    with client.subscribe(("prompt", "event")) as sub:
        time.sleep(0.3)  # let the subscription reach the publisher (slow joiner)
        reply = client.recalibrate(classes=classes, seconds_per_class=args.seconds,
                                   repetitions=args.repetitions)
        if not reply.get("ok"):
            print(f"emtl-stream recalibrate: {reply.get('error')}", file=sys.stderr)
            return 1
        total = float(reply.get("duration_s") or 0) + 60.0
        deadline = time.monotonic() + total
        last_step = None
        while time.monotonic() < deadline:
            msg = sub.recv(timeout_s=1.0)
            if msg is None:
                continue
            topic, obj = msg
            if topic == "prompt":
                bar_len = 20
                left = float(obj["remaining_s"])
                key = (obj["step"], obj["class"])
                if key != last_step:
                    if last_step is not None:
                        print(file=sys.stderr)
                    last_step = key
                filled = bar_len - min(bar_len, int(round(left * 4)))
                print(f"\r[{obj['step']:>2}/{obj['of']}] {obj['class']:<18} "
                      f"[{'#' * filled}{'.' * (bar_len - filled)}] {left:4.1f} s",
                      end="", file=sys.stderr, flush=True)
            elif topic == "event":
                kind = obj.get("kind")
                if kind == "calibration_done":
                    print(f"\nnew map live: version {obj.get('model')}", file=sys.stderr)
                    return 0
                if kind == "calibration_failed":
                    print(f"\nemtl-stream recalibrate: {obj.get('reason')}", file=sys.stderr)
                    return 1
    print("\nemtl-stream recalibrate: no result from the daemon in time", file=sys.stderr)
    return 1


def status(args) -> int:
    """``emtl-stream status``."""
    reply = _client(args).status()
    if args.json or not reply.get("ok"):
        print(json.dumps(reply, indent=2))
        return 0 if reply.get("ok") else 1
    s = reply["stream"]
    print(f"state {reply['state']}  model {reply['model']}  classes {', '.join(reply['classes'])}")
    print(f"stream {s['name']} ({s['channels']} ch @ {s['rate']} Hz) "
          f"{'connected' if s['connected'] else 'NOT connected'}")
    print(f"windows {reply['windows']}  dropped {reply['dropped']}  uptime {reply['uptime_s']:.0f} s")
    return 0


def rollback(args) -> int:
    """``emtl-stream rollback [VERSION]``."""
    reply = _client(args).rollback(args.version)
    if not reply.get("ok"):
        print(f"emtl-stream rollback: {reply.get('error')}", file=sys.stderr)
        return 1
    print(f"map {reply['model']} live (was {reply['previous']})")
    return 0


def subscribe(args) -> int:
    """``emtl-stream subscribe [TOPIC...]``: one JSON line per message."""
    client = _client(args)
    n = 0
    with client.subscribe(tuple(args.topics)) as sub:
        while args.count == 0 or n < args.count:
            msg = sub.recv(timeout_s=1.0)
            if msg is None:
                continue
            print(msg[0], json.dumps(msg[1]), flush=True)
            n += 1
    return 0


def warmup(args) -> int:
    """``emtl-stream warmup``: compile or load every kernel; prints the times."""
    from .daemon.warmup import warm_up_for

    t = warm_up_for(_config(args))
    print(" ".join(f"{k}={v:.3f}s" for k, v in t.items()))
    return 0


def bench(args) -> int:
    """``emtl-stream bench``: run the benchmark scripts in tools/ (repository checkout)."""
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
