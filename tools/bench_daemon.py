#!/usr/bin/env python3
"""Daemon benchmark: end-to-end prediction latency and recalibration swap time.

Three processes, so none shares a GIL with another:

* the **replayer** (this script re-run as ``_replay``): a synthetic armband on an LSL
  outlet, pushing ``--chunk-ms`` of signal per chunk on the sample clock;
* the **daemon**: ``python -m emtl_stream run --config <tmp>.toml`` with a source
  model trained offline on the same (seeded) armband, default settings otherwise
  (features published, shift detection on);
* this process: a ZeroMQ subscriber (and the control client for recalibrations).

Latency = ``pylsl.local_clock()`` when a ``pred`` arrives here minus the pred's ``t``
(the LSL timestamp of the window's last sample; the replayer stamps samples on the
sample clock ``t_start + i / fs``, which is the local clock). It is split into
``t_pub - t`` (sample due -> outlet push -> LSL -> daemon pull -> features ->
classify -> publish) and ``receipt - t_pub`` (ZeroMQ delivery and JSON decode).

Swap time = ``t_pub`` of the ``model_swapped`` event minus the timestamp of the
burst's last window (read from the burst file in the daemon's state directory),
split at the ``state: fitting`` event into "wait until the burst is closed" and
"fit + swap".

Usage::

    python tools/bench_daemon.py              # about 2.5 minutes
    python tools/bench_daemon.py --quick      # about 1 minute
    python tools/bench_daemon.py --seconds 30 --chunk-ms 1 10 7
    python tools/bench_daemon.py --cpu --seconds 30 --before ../main   # CPU + latency, A/B
    python tools/bench_daemon.py --swap --repeats 5 --before ../main   # swap times, A/B

``--cpu`` measures the daemon process's CPU time (user + system, from
``/proc/<pid>/stat``) over ``--seconds`` (>= 30) while this process receives and
times every prediction, at 8 ch x 200 Hz and 64 ch x 2 kHz. With ``--before DIR``
the same run is repeated with the daemon imported from another checkout (its
numba cache in a temporary directory), side by side, in one invocation. A
``floor`` row measures, on the same replayed stream, a Python process that only
waits, pulls each window's samples, takes their mean absolute value and publishes
it (:func:`_floor_main`): what this machine charges for the I/O alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

WINDOW_MS, STEP_MS = 200.0, 50.0
FEATURES = ("mav", "wl", "zc", "ssc")
SEED = 3
# Above this many channels the daemon's own warm-up cannot run (it forces the dense
# transfer solver on the real shape: a 2 GB / 32 GB system at 64 channels, SIGSEGV or
# MemoryError; reported). The daemon process then warms the same kernels on an
# 8-channel toy shape instead (numba code does not depend on array sizes). This only
# affects start-up; the per-window path measured here is unchanged.
SMALL_WARMUP_ABOVE = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_bundle(n_channels: int, fs: float, path: Path) -> None:
    """Offline source model on the seeded synthetic armband (no LSL)."""
    from emtl_stream.daemon.bundle import fit_source_model, make_bundle
    from emtl_stream.pipeline.features import FeatureExtractor
    from emtl_stream.pipeline.offline import featurize
    from emtl_stream.sim.synthetic import SyntheticArmband

    arm = SyntheticArmband(n_channels=n_channels, fs=fs, seed=SEED)
    ext = FeatureExtractor(FEATURES, n_channels=n_channels, fs=fs)
    settle = int(0.3 * fs)
    Xs, ys = [], []
    for cls in arm.class_names:
        emg = arm.generate(settle + int(3.0 * fs), cls)[settle:]
        X, _, _ = featurize(emg, fs, ext, WINDOW_MS, STEP_MS)
        Xs.append(X)
        ys += [cls] * len(X)
    model = fit_source_model(np.vstack(Xs), np.asarray(ys))
    make_bundle(model, ext, WINDOW_MS, STEP_MS, n_channels, fs, source="bench").save(path)


class Setup:
    """Replayer and daemon subprocesses for one stream shape; a context manager."""

    def __init__(self, n_channels: int, fs: float, chunk_ms: float, shift: float = 0.0,
                 follow_prompts: bool = False, code: str | None = None):
        self.code = code
        self.n_channels, self.fs, self.chunk_ms = n_channels, fs, chunk_ms
        self.shift, self.follow = shift, follow_prompts
        self.tmp = Path(tempfile.mkdtemp(prefix="emtl-bench-daemon-"))
        self.sid = f"bench-{uuid.uuid4().hex}"
        self.pub = f"tcp://127.0.0.1:{_free_port()}"
        self.control = f"tcp://127.0.0.1:{_free_port()}"
        self.state = self.tmp / "state"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Setup":
        from emtl_stream.io.client import Client

        model = self.tmp / "model.npz"
        _train_bundle(self.n_channels, self.fs, model)
        cfg = self.tmp / "daemon.toml"
        cfg.write_text(
            f'[stream]\nsource_id = "{self.sid}"\nname = ""\n'
            f'[model]\npath = "{model}"\n'
            f'[calibration]\nlead_in_s = 0.2\nrest_s = 0.2\n'
            f'[zmq]\npub = "{self.pub}"\ncontrol = "{self.control}"\n'
            f'[state]\ndir = "{self.state}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
        log = open(self.tmp / "processes.log", "w")
        replay = [sys.executable, __file__, "_replay", "--channels", str(self.n_channels),
                  "--fs", str(self.fs), "--chunk-ms", str(self.chunk_ms), "--source-id", self.sid,
                  "--shift", str(self.shift)]
        if self.follow:
            replay += ["--follow-prompts", self.pub]
        self.procs.append(subprocess.Popen(replay, env=env, stdout=log, stderr=log))
        daemon = [sys.executable, "-m", "emtl_stream", "run", "--config", str(cfg)]
        if self.n_channels > SMALL_WARMUP_ABOVE:
            daemon = [sys.executable, __file__, "_daemon", str(cfg)]
        denv = dict(env)
        if self.code:  # the daemon from another checkout, with its own numba cache
            denv["PYTHONPATH"] = str(Path(self.code).resolve())
            denv["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "emtl-bench-before-cache")
        self.procs.append(subprocess.Popen(daemon, env=denv, stdout=log, stderr=log,
                                           cwd=self.code or None))
        self.client = Client(self.control, self.pub, timeout_s=2.0)
        deadline = time.monotonic() + 600  # a first start compiles the kernels
        while time.monotonic() < deadline:
            try:
                if self.client.status()["stream"]["connected"]:
                    return self
            except TimeoutError:
                pass
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"daemon/replayer did not come up; see {self.tmp / 'processes.log'}")

    def __exit__(self, *exc) -> None:
        self.client.close()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def measure_latency(n_channels: int, fs: float, chunk_ms: float, seconds: float) -> dict:
    """Latency percentiles (ms) over ``seconds`` of predictions after 2 s of settling."""
    import pylsl

    with Setup(n_channels, fs, chunk_ms) as s:
        total, internal, delivery, seqs = [], [], [], []
        with s.client.subscribe(("pred",)) as sub:
            t_settle = time.monotonic() + 2.0
            t_end = t_settle + seconds
            while time.monotonic() < t_end:
                msg = sub.recv(timeout_s=2.0)
                now = pylsl.local_clock()
                if msg is None:
                    raise RuntimeError("no prediction within 2 s")
                if time.monotonic() < t_settle:
                    continue
                p = msg[1]
                total.append(now - p["t"])
                internal.append(p["t_pub"] - p["t"])
                delivery.append(now - p["t_pub"])
                seqs.append(p["seq"])
    gaps = int(np.sum(np.diff(seqs) - 1))

    def pct(a):
        a = 1e3 * np.asarray(a)
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
                "max": float(a.max())}

    return {"channels": n_channels, "fs": fs, "chunk_ms": chunk_ms, "n": len(total),
            "lost": gaps, "total": pct(total), "internal": pct(internal),
            "delivery": pct(delivery)}


def measure_swap(n_channels: int, fs: float, repeats: int, seconds_per_class: float,
                 code: str | None = None) -> dict:
    """Recalibrate ``repeats`` times on a 1-electrode-shifted armband; swap times (ms).

    With ``code`` the daemon is imported from that checkout (see :class:`Setup`).
    """
    from emtl_stream.io.store import StateStore

    rows = []
    with Setup(n_channels, fs, 10.0, shift=1.0, follow_prompts=True, code=code) as s:
        store = StateStore(s.state)
        with s.client.subscribe(("event",)) as sub:
            time.sleep(0.3)
            for _ in range(repeats):
                reply = s.client.recalibrate(seconds_per_class=seconds_per_class)
                if not reply.get("ok"):
                    raise RuntimeError(f"recalibrate refused: {reply}")
                events = {}
                deadline = time.monotonic() + reply["duration_s"] + 30
                while time.monotonic() < deadline:
                    msg = sub.recv(timeout_s=1.0)
                    if msg is None:
                        continue
                    ev = msg[1]
                    if ev["kind"] == "state" and ev.get("state") == "fitting":
                        events["fitting"] = ev
                    if ev["kind"] in ("model_swapped", "calibration_done", "calibration_failed"):
                        events[ev["kind"]] = ev
                    if ev["kind"] in ("calibration_done", "calibration_failed"):
                        break
                if "model_swapped" not in events:
                    raise RuntimeError(f"no swap: {events}")
                burst_id = events["fitting"]["burst"]
                arrays, _ = store.load_burst(burst_id)
                t_last = float(np.max(arrays["timestamps"]))
                rows.append({
                    "windows": int(len(arrays["timestamps"])),
                    "swap_ms": 1e3 * (events["model_swapped"]["t_pub"] - t_last),
                    "wait_ms": 1e3 * (events["fitting"]["t_pub"] - t_last),
                    "fit_swap_ms": 1e3 * (events["model_swapped"]["t_pub"]
                                          - events["fitting"]["t_pub"]),
                    "fit_ms": 1e3 * float(events["calibration_done"]["fit_s"]),
                    "n_iter": events["calibration_done"].get("n_iter"),
                })
    return {"channels": n_channels, "fs": fs, "dim": n_channels * len(FEATURES), "runs": rows,
            "code": code or "this checkout"}


def swap_table(repeats: int, before: str | None, out_json: str | None) -> int:
    """``--swap``: swap times at 8 and 16 channels, optionally against another checkout.

    The daemons run one after the other, alternating (before, this, before, this, ...)
    so both see the same machine load; medians per dimension and code.
    """
    codes = ([before] if before else []) + [None]
    runs = {}
    print("\n| feature dim | daemon code | run | swap (last window → model_swapped) | "
          "wait for burst close | fit + swap | fit_s |")
    print("|---|---|---|---|---|---|---|")
    for n_ch in (8, 16):
        for rnd in range(repeats):
            for code in codes:
                r = measure_swap(n_ch, 1000.0, 1, 0.6, code)
                row = r["runs"][0]
                runs.setdefault((n_ch, r["code"]), []).append(row)
                print(f"| {r['dim']} | {r['code']} | {rnd + 1} | {row['swap_ms']:.1f} ms | "
                      f"{row['wait_ms']:.1f} ms | {row['fit_swap_ms']:.1f} ms | "
                      f"{row['fit_ms']:.1f} ms |", flush=True)
    print("\n| feature dim | daemon code | runs | swap p50 | wait p50 | fit + swap p50 | "
          "fit_s p50 |")
    print("|---|---|---|---|---|---|---|")
    for (n_ch, code), rows in runs.items():
        med = {k: float(np.median([r[k] for r in rows]))
               for k in ("swap_ms", "wait_ms", "fit_swap_ms", "fit_ms")}
        print(f"| {n_ch * len(FEATURES)} | {code} | {len(rows)} | {med['swap_ms']:.1f} ms | "
              f"{med['wait_ms']:.1f} ms | {med['fit_swap_ms']:.1f} ms | {med['fit_ms']:.1f} ms |")
    if out_json:
        Path(out_json).write_text(json.dumps(
            [{"channels": c, "code": k, "runs": v} for (c, k), v in runs.items()], indent=1))
    return 0


def _replay_main(argv) -> int:
    """Child process: stream the seeded synthetic armband until terminated."""
    import signal
    import threading

    from emtl_stream.sim.replay import Replayer
    from emtl_stream.sim.synthetic import SyntheticArmband

    p = argparse.ArgumentParser()
    p.add_argument("--channels", type=int)
    p.add_argument("--fs", type=float)
    p.add_argument("--chunk-ms", type=float)
    p.add_argument("--source-id")
    p.add_argument("--shift", type=float, default=0.0)
    p.add_argument("--follow-prompts", default=None)
    a = p.parse_args(argv)
    arm = SyntheticArmband(n_channels=a.channels, fs=a.fs, seed=SEED, shift=a.shift)
    schedule = None if a.follow_prompts else [(c, 1.0) for c in arm.class_names]
    player = Replayer(arm, name="emtl-bench", source_id=a.source_id, chunk_ms=a.chunk_ms,
                      follow_prompts=a.follow_prompts, class_schedule=schedule, loop=True,
                      shift=a.shift, markers=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    player.start()
    while not stop.is_set() and not player.done.is_set():
        stop.wait(0.2)
    late = player.late_s
    player.stop()
    print(f"replayer: worst push lateness {1e3 * late:.2f} ms", file=sys.stderr)
    return 0


def _cpu_ticks(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_cpu(n_channels: int, fs: float, chunk_ms: float, seconds: float,
                code: str | None = None) -> dict:
    """Daemon CPU (% of one core) over ``seconds`` and the latency of the same predictions."""
    import pylsl

    with Setup(n_channels, fs, chunk_ms, code=code) as s:
        pid = s.procs[1].pid
        lat = []
        with s.client.subscribe(("pred",)) as sub:
            t_settle = time.monotonic() + 3.0
            while time.monotonic() < t_settle:
                sub.recv(timeout_s=0.5)
            c0, w0 = _cpu_ticks(pid), time.monotonic()
            while time.monotonic() < w0 + seconds:
                msg = sub.recv(timeout_s=2.0)
                if msg is None:
                    raise RuntimeError("no prediction within 2 s")
                lat.append(pylsl.local_clock() - msg[1]["t"])
            c1, w1 = _cpu_ticks(pid), time.monotonic()
    lat = 1e3 * np.asarray(lat)
    return {"channels": n_channels, "fs": fs, "code": code or "this checkout",
            "seconds": w1 - w0, "cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "n": int(lat.size),
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}


def _floor_main(argv) -> int:
    """Child process: the least a Python process with the daemon's I/O does per window.

    Blocks in a ZeroMQ poll, then in one LSL pull of a window's new samples, takes
    their mean absolute value and publishes it as JSON on a PUB socket: no filter,
    no features, no classifier, no control socket. Prints its CPU share as JSON.
    """
    import pylsl
    import zmq

    sid, n_ch, fs, seconds = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    inlet = pylsl.StreamInlet(pylsl.resolve_byprop("source_id", sid, timeout=30)[0],
                              max_buflen=60)
    step = int(round(STEP_MS * fs / 1000.0))
    buf = np.empty((step, n_ch), dtype=np.float32)
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")

    def loop(duration):
        n, t_end = 0, time.monotonic() + duration
        while time.monotonic() < t_end:
            pub.poll(int(STEP_MS * 0.8), zmq.POLLIN)  # the daemon's control wait
            raw, ts = inlet.pull_chunk(timeout=0.5, max_samples=step, dest_obj=buf,
                                       as_numpy=True)
            if len(ts):
                mav = np.abs(raw).mean(axis=0)
                pub.send(b"pred " + json.dumps({"seq": n, "t": float(ts[-1]),
                                                 "x": mav.tolist()}).encode())
                n += 1
        return n

    loop(3.0)
    c0, w0 = _cpu_ticks(os.getpid()), time.monotonic()
    n = loop(seconds)
    c1, w1 = _cpu_ticks(os.getpid()), time.monotonic()
    print(json.dumps({"cpu_pct": 100.0 * (c1 - c0) / (w1 - w0), "n": n, "seconds": w1 - w0}))
    return 0


def measure_floor(n_channels: int, fs: float, chunk_ms: float, seconds: float) -> dict:
    """CPU of :func:`_floor_main` on the same replayed stream (the machine's floor)."""
    sid = f"emtl-floor-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    replay = subprocess.Popen([sys.executable, __file__, "_replay", "--channels",
                               str(n_channels), "--fs", str(fs), "--chunk-ms", str(chunk_ms),
                               "--source-id", sid], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, __file__, "_floor", sid, str(n_channels), str(fs),
                              str(seconds)], env=env, capture_output=True, text=True,
                             timeout=seconds + 120, check=True).stdout
    finally:
        replay.terminate()
        replay.wait(10)
    return json.loads(out.strip().splitlines()[-1])


def _daemon_main(argv) -> int:
    """Child process: ``emtl-stream run`` with the small warm-up (see SMALL_WARMUP_ABOVE)."""
    from emtl_stream.config import load_config
    from emtl_stream.daemon import service, warmup

    def small_warm_up_for(config, bundle=None, **kw):
        from emtl_stream.daemon.bundle import transfer_settings

        names = bundle.features.get("names", FEATURES) if bundle else FEATURES
        tkw, ring = transfer_settings(config, 8)
        return warmup.warm_up(8, 1000.0, names, WINDOW_MS, tkw, ring is not None, **kw)

    warmup.warm_up_for = small_warm_up_for
    return service.run(load_config(argv[0]))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_replay":
        return _replay_main(argv[1:])
    if argv and argv[0] == "_daemon":
        return _daemon_main(argv[1:])
    if argv and argv[0] == "_floor":
        return _floor_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    p.add_argument("--seconds", type=float, default=None, help="latency run length per cell")
    p.add_argument("--chunk-ms", type=float, nargs="+", default=None,
                   help="replayer chunk sizes to try (default 10, plus 1 and 7 at 64 ch)")
    p.add_argument("--repeats", type=int, default=None, help="recalibrations per dimension")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--cpu", action="store_true",
                   help="daemon CPU and latency at 8 ch x 200 Hz and 64 ch x 2 kHz")
    p.add_argument("--before", default=None,
                   help="with --cpu or --swap: also run the daemon from this checkout, "
                        "side by side")
    p.add_argument("--swap", action="store_true",
                   help="only the swap times at 8 and 16 channels (--repeats each, default 5)")
    a = p.parse_args(argv)
    if a.swap:
        print(f"Environment: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        return swap_table(a.repeats or 5, a.before, a.json)
    if a.cpu:
        seconds = max(30.0, a.seconds or 30.0)
        print(f"Environment: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        print("\n| stream | daemon code | seconds | windows | daemon CPU | latency p50 | "
              "latency p99 |")
        print("|---|---|---|---|---|---|---|")
        rows = []
        for n_ch, fs in ((8, 200.0), (64, 2000.0)):
            for code in ([a.before] if a.before else []) + [None]:
                r = measure_cpu(n_ch, fs, 10.0, seconds, code)
                rows.append(r)
                print(f"| {n_ch} ch × {fs:g} Hz | {r['code']} | {r['seconds']:.0f} | {r['n']} | "
                      f"{r['cpu_pct']:.1f} % | {r['p50']:.2f} ms | {r['p99']:.2f} ms |",
                      flush=True)
            f = measure_floor(n_ch, fs, 10.0, seconds)
            rows.append({"channels": n_ch, "fs": fs, "code": "floor", **f})
            print(f"| {n_ch} ch × {fs:g} Hz | floor: pull, MAV, publish | {f['seconds']:.0f} | "
                  f"{f['n']} | {f['cpu_pct']:.1f} % | | |", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=1))
        return 0
    seconds = a.seconds or (8.0 if a.quick else 20.0)
    repeats = a.repeats or (1 if a.quick else 3)
    cells = [(8, 1000.0, 10.0), (64, 2000.0, 10.0)]
    if a.chunk_ms:
        cells = [(c, f, ch) for c, f, _ in cells for ch in a.chunk_ms]
    elif not a.quick:
        cells += [(64, 2000.0, 1.0), (64, 2000.0, 7.0)]

    print(f"Environment: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {"latency": [], "swap": []}
    print("\n| stream | chunk | windows | lost | total p50 | total p99 | total max | "
          "t_pub−t p50 | t_pub−t p99 | delivery p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n_ch, fs, chunk in cells:
        r = measure_latency(n_ch, fs, chunk, seconds)
        results["latency"].append(r)
        print(f"| {n_ch} ch × {fs / 1000:g} kHz | {chunk:g} ms | {r['n']} | {r['lost']} | "
              f"{r['total']['p50']:.2f} ms | {r['total']['p99']:.2f} ms | "
              f"{r['total']['max']:.2f} ms | {r['internal']['p50']:.2f} ms | "
              f"{r['internal']['p99']:.2f} ms | {r['delivery']['p99']:.2f} ms |", flush=True)
    print("\n| feature dim | run | burst windows | swap (last window → model_swapped) | "
          "wait for burst close | fit + swap | fit_s | EM iterations |")
    print("|---|---|---|---|---|---|---|---|")
    for n_ch in (8, 16):
        r = measure_swap(n_ch, 1000.0, repeats, 0.6)
        results["swap"].append(r)
        for i, row in enumerate(r["runs"]):
            print(f"| {r['dim']} | {i + 1} | {row['windows']} | {row['swap_ms']:.1f} ms | "
                  f"{row['wait_ms']:.1f} ms | {row['fit_swap_ms']:.1f} ms | "
                  f"{row['fit_ms']:.1f} ms | {row['n_iter']} |", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
