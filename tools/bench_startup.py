#!/usr/bin/env python3
"""Start-up benchmark: the first ``emtl-stream demo`` and a daemon start on a warm cache.

* ``--first-run``: ``emtl-stream demo`` on an empty numba cache (a private
  ``NUMBA_CACHE_DIR``, so the checkout's own cache is left alone), timed from the
  command's start to its exit, with the demo's own phases from its output.
* default: ``emtl-stream run`` with a source model on a warm cache, timed from the
  process start until the control socket answers ``status`` (imports, loading the
  model, kernel warm-up, binding), ``--repeats`` times; the daemon's own log gives the
  warm-up time. A synthetic armband streams on LSL throughout, so the stream search
  returns at once.

With ``--before DIR`` each measurement also runs the code of another checkout
(``PYTHONPATH=DIR``, its own numba cache), alternating with this one.

Usage::

    python tools/bench_startup.py --repeats 7 --before ../main
    python tools/bench_startup.py --first-run --before ../main
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]


def _env(code: str | None, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    env["NUMBA_CACHE_DIR"] = str(cache)
    if code:
        env["PYTHONPATH"] = str(Path(code).resolve())
    return env


def _label(code: str | None) -> str:
    return code or "this checkout"


def first_run(code: str | None, cache: Path) -> dict:
    """Time ``emtl-stream demo`` on an empty numba cache."""
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emtl_stream", "demo"], env=_env(code, cache),
                          cwd=code or HERE, capture_output=True, text=True, timeout=1800)
    total = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    log = cache.with_suffix(".demo.log")
    log.write_text(out)
    m = re.search(r"compile=([0-9.]+)s", out) or re.search(r"kernels compiled in ([0-9.]+) s",
                                                            out)
    return {"code": _label(code), "rc": proc.returncode, "total_s": total,
            "compile_s": float(m.group(1)) if m else None,
            "table": [ln for ln in out.splitlines() if ln.startswith("|") or "demo took" in ln],
            "tail": out.splitlines()[-3:]}


def warm_start(code: str | None, cache: Path, config: Path) -> float:
    """Seconds from ``emtl-stream run`` to its first ``status`` reply (warm cache)."""
    import zmq

    control = re.search(r'control = "([^"]+)"', config.read_text()).group(1)
    ctx = zmq.Context.instance()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "emtl_stream", "run", "--config",
                             str(config)], env=_env(code, cache), cwd=code or HERE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(control)
            sock.send_json({"v": 1, "cmd": "status"})
            if sock.poll(20):
                sock.recv()
                sock.close()
                return time.perf_counter() - t0
            sock.close()
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}")
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("daemon did not answer within 600 s")
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv=None) -> int:
    """Run the benchmark; print Markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--first-run", action="store_true", help="time the demo on an empty cache")
    p.add_argument("--before", default=None, help="also run another checkout, alternating")
    p.add_argument("--repeats", type=int, default=7, help="warm starts per checkout")
    p.add_argument("--quick", action="store_true", help="3 warm starts (emtl-stream bench)")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats = 3
    codes = ([a.before] if a.before else []) + [None]
    tmp = Path(tempfile.mkdtemp(prefix="emtl-bench-startup-"))
    caches = {c: tmp / f"cache-{i}" for i, c in enumerate(codes)}
    print(f"Environment: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if a.first_run:
        print("\n| code | demo exit | first run (empty cache) | of it compiling |")
        print("|---|---|---|---|")
        for code in codes:
            r = first_run(code, caches[code])
            comp = f"{r['compile_s']:.1f} s" if r["compile_s"] is not None else "–"
            print(f"| {r['code']} | {r['rc']} | {r['total_s']:.1f} s | {comp} |", flush=True)
            for line in r["table"] or r["tail"]:
                print(f"    {line}")
        return 0

    sys.path.insert(0, str(HERE / "tools"))
    import bench_daemon as bd
    from emtl_stream.sim.replay import Replayer
    from emtl_stream.sim.synthetic import SyntheticArmband

    sid = f"bench-startup-{uuid.uuid4().hex}"
    model = tmp / "model.npz"
    bd._train_bundle(8, 1000.0, model)
    config = tmp / "daemon.toml"
    config.write_text(
        f'[stream]\nsource_id = "{sid}"\nname = ""\n[model]\npath = "{model}"\n'
        f'[zmq]\npub = "tcp://127.0.0.1:{bd._free_port()}"\n'
        f'control = "tcp://127.0.0.1:{bd._free_port()}"\n[state]\ndir = "{tmp / "state"}"\n')
    player = Replayer(SyntheticArmband(n_channels=8, fs=1000.0, seed=bd.SEED), name="emtl-bench",
                      source_id=sid, loop=True, markers=False,
                      class_schedule=[("rest", 1.0)]).start()
    try:
        for code in codes:  # fill each cache once (the first start compiles)
            warm_start(code, caches[code], config)
        times = {c: [] for c in codes}
        for _ in range(a.repeats):
            for code in codes:
                times[code].append(warm_start(code, caches[code], config))
    finally:
        player.stop()
    print("\n| code | starts | run → first status reply, median | min | max |")
    print("|---|---|---|---|---|")
    for code in codes:
        t = np.asarray(times[code])
        print(f"| {_label(code)} | {t.size} | {np.median(t):.2f} s | {t.min():.2f} s | "
              f"{t.max():.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
