"""Benchmark of the streaming input path: LSL pull + filter + features, per step.

For each (channels x rate) configuration a :class:`Replayer` in a child process
plays the synthetic armband in real time over LSL on loopback (channel 0 = sample
counter), and the
main thread runs the daemon's acquisition step: ``EMGInlet.pull`` then
``FeaturePipeline.push`` (band-pass + notch, MAV/WL/ZC/SSC on 200 ms windows,
50 ms step). Reported per configuration:

* p50 / p99 / max time of a step that received samples (pull + filter + features),
* samples lost (from the counter channel: any jump in it), gaps seen by the inlet,
* real-time factor (RTF) and p99 of the pipeline alone on pre-generated data
  (10 ms chunks, same process, no LSL),
* RTF of a replay "as fast as possible" over LSL (pre-generated recording, rate=0),
  with the samples lost on the way.

Usage::

    python tools/bench_stream.py                      # about 1 minute
    python tools/bench_stream.py --quick              # 2 s per configuration
    python tools/bench_stream.py --long 300           # + 5 min at 320 x 2048 Hz, counting loss
    python tools/bench_stream.py --out /tmp/bench_stream.md   (then merge into docs/benchmarks.md)

No timed assertion anywhere: this prints numbers, tests check behaviour.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
import time
import uuid

import numpy as np

from emtl_stream.io.lsl_inlet import EMGInlet
from emtl_stream.io.recordings import Recording
from emtl_stream.sim.replay import Replayer
from emtl_stream.pipeline.features import FeatureExtractor, FeaturePipeline
from emtl_stream.pipeline.filters import StreamingFilter
from emtl_stream.sim.synthetic import SyntheticArmband

CONFIGS = [(8, 200.0), (16, 1000.0), (64, 2000.0), (320, 2048.0)]
FEATURES = ("mav", "wl", "zc", "ssc")


def make_pipeline(n_ch: int, fs: float) -> FeaturePipeline:
    ext = FeatureExtractor(FEATURES, n_channels=n_ch, fs=fs)
    band = (20.0, min(450.0, 0.4 * fs))
    filt = StreamingFilter(fs, n_ch, bandpass=band, notch=50.0)
    return FeaturePipeline(ext, 200.0, 50.0, filter=filt)


def warm_up(n_ch: int, fs: float) -> None:
    """Compile / cache-load the kernels so the first timed step is not a compile."""
    pipe = make_pipeline(n_ch, fs)
    x = np.random.default_rng(0).standard_normal((int(fs), n_ch))
    pipe.push(x, np.arange(len(x)) / fs)


def counter_loss(counter: np.ndarray) -> int:
    """Samples missing from a received counter channel (jumps beyond +1)."""
    if len(counter) < 2:
        return 0
    d = np.diff(counter)
    return int(np.sum(np.where(d > 1, d - 1, 0)))


def _produce(sid: str, n_ch: int, fs: float, seconds: float, chunk_ms: float) -> None:
    """Child process: the fake device (own process, own GIL, like a real amplifier)."""
    arm = SyntheticArmband(n_ch, fs, seed=0)
    player = Replayer(arm, name="bench", source_id=sid, rate=1.0, seconds=seconds,
                      counter_channel=True, markers=False, chunk_ms=chunk_ms,
                      class_schedule=[(c, 1.0) for c in arm.class_names], loop=True,
                      wait_for_consumer_s=30.0)
    player.start()
    player.join(seconds + 60.0)
    player.stop()


def live_run(n_ch: int, fs: float, seconds: float, chunk_ms: float = 10.0) -> dict:
    """Real-time replay over LSL; time every acquisition step that got samples."""
    sid = f"bench-{uuid.uuid4().hex}"
    proc = mp.get_context("spawn").Process(target=_produce, args=(sid, n_ch, fs, seconds,
                                                                  chunk_ms), daemon=True)
    proc.start()
    inlet = EMGInlet(source_id=sid, resolve_timeout=10.0, expected_channels=n_ch,
                     expected_rate=fs)
    inlet.connect()
    pipe = make_pipeline(n_ch, fs)
    steps, counters = [], []
    n_total = int(round(seconds * fs))
    deadline = time.monotonic() + seconds + 15.0
    received = 0
    while received < n_total and time.monotonic() < deadline:
        t0 = time.perf_counter()
        s, ts = inlet.pull(timeout=0.0)
        if len(ts):
            pipe.push(s, ts)
            steps.append(time.perf_counter() - t0)
            counters.append(s[:, 0].copy())
            received += len(ts)
        else:
            time.sleep(0.0005)
    proc.join(10.0)
    if proc.is_alive():
        proc.terminate()
    inlet.close()
    counter = np.concatenate(counters) if counters else np.empty(0)
    lost = counter_loss(counter) + max(0, n_total - received)
    st = np.array(steps) * 1e3
    return {"p50": float(np.percentile(st, 50)), "p99": float(np.percentile(st, 99)),
            "max": float(st.max()), "steps": len(st), "received": received, "lost": lost,
            "gaps": inlet.n_gaps, "windows": pipe.n_windows}


def offline_run(n_ch: int, fs: float, seconds: float, chunk_ms: float = 10.0) -> dict:
    """The pipeline alone on pre-generated data: RTF and per-chunk p99 (no LSL, no
    producer competing for the CPU)."""
    x = SyntheticArmband(n_ch, fs, seed=1).generate(int(seconds * fs), 1).astype(np.float64)
    ts = np.arange(len(x)) / fs
    pipe = make_pipeline(n_ch, fs)
    c = max(1, int(round(chunk_ms * fs / 1000)))
    steps = []
    t_all = time.perf_counter()
    for a in range(0, len(x), c):
        t0 = time.perf_counter()
        pipe.push(x[a:a + c], ts[a:a + c])
        steps.append(time.perf_counter() - t0)
    wall = time.perf_counter() - t_all
    return {"rtf": seconds / wall, "p99": 1e3 * float(np.percentile(steps, 99))}


def fast_replay(n_ch: int, fs: float, seconds: float) -> dict:
    """Replay a pre-generated recording with rate=0 over LSL; RTF of the whole path."""
    emg = SyntheticArmband(n_ch, fs, seed=2).generate(int(seconds * fs), 2)
    rec = Recording(emg=emg, fs=fs)
    sid = f"bench-fast-{uuid.uuid4().hex}"
    player = Replayer(rec, name="bench-fast", source_id=sid, rate=0, counter_channel=True,
                      markers=False, wait_for_consumer_s=10.0)
    player.start()
    # the LSL buffer is sized in nominal seconds: hold the whole replay
    inlet = EMGInlet(source_id=sid, resolve_timeout=10.0, max_buflen_s=int(seconds) + 5,
                     chunk_cap=int(fs))
    inlet.connect()
    pipe = make_pipeline(n_ch, fs)
    n_total, received, counters = len(emg), 0, []
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60.0 + seconds
    while received < n_total and time.monotonic() < deadline:
        s, ts = inlet.pull(timeout=0.01)
        if len(ts):
            pipe.push(s, ts)
            counters.append(s[:, 0].copy())
            received += len(ts)
        elif player.done.is_set() and inlet.pull(timeout=0.2)[1].size == 0:
            break
    wall = time.perf_counter() - t0
    player.stop()
    inlet.close()
    counter = np.concatenate(counters) if counters else np.empty(0)
    return {"rtf": seconds / wall, "lost": counter_loss(counter) + (n_total - received)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="real-time run per configuration")
    p.add_argument("--long", type=float, default=0.0,
                   help="extra loss run at 320 x 2048 Hz of this many seconds (e.g. 300)")
    p.add_argument("--fast-seconds", type=float, default=20.0,
                   help="signal length of the as-fast-as-possible replay")
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    p.add_argument("--quick", action="store_true",
                   help="short runs (2 s real time, 5 s fast replay per configuration)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.fast_seconds = min(args.seconds, 2.0), min(args.fast_seconds, 5.0)

    rows = []
    for n_ch, fs in CONFIGS:
        warm_up(n_ch, fs)
        live = live_run(n_ch, fs, args.seconds)
        off = offline_run(n_ch, fs, min(args.seconds, 10.0))
        fast = fast_replay(n_ch, fs, args.fast_seconds)
        rows.append((n_ch, fs, live, off, fast))
        print(f"{n_ch:4d} ch x {fs:6.0f} Hz: step p50 {live['p50']:.3f} ms, p99 {live['p99']:.3f} "
              f"ms, max {live['max']:.2f} ms, lost {live['lost']}, gaps {live['gaps']}; "
              f"pipeline alone RTF {off['rtf']:.0f}x p99 {off['p99']:.3f} ms; fast replay RTF {fast['rtf']:.1f}x lost "
              f"{fast['lost']}", file=sys.stderr, flush=True)
    long = None
    if args.long > 0:
        long = live_run(320, 2048.0, args.long)
        print(f"long run {args.long:g} s at 320 x 2048 Hz: lost {long['lost']}, gaps "
              f"{long['gaps']}, p99 {long['p99']:.3f} ms", file=sys.stderr)

    lines = [
        f"Command: `python tools/bench_stream.py {' '.join(argv or sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, numpy {np.__version__}; {args.seconds:g} s real-time "
        f"replay per row, chunks of 10 ms, features {'/'.join(FEATURES)} on 200 ms windows every "
        "50 ms, band-pass + 50 Hz notch.",
        "",
        "| channels x rate | step p50 (ms) | step p99 (ms) | step max (ms) | lost samples "
        "| gaps | pipeline alone: RTF, p99 (ms) | fast LSL replay RTF (lost) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n_ch, fs, live, off, fast in rows:
        lines.append(f"| {n_ch} x {fs:g} Hz | {live['p50']:.3f} | {live['p99']:.3f} | "
                     f"{live['max']:.2f} | {live['lost']} | {live['gaps']} | "
                     f"{off['rtf']:.0f}x, {off['p99']:.3f} | "
                     f"{fast['rtf']:.1f}x ({fast['lost']}) |")
    if long is not None:
        lines += ["", f"Long run: {args.long:g} s at 320 x 2048 Hz: {long['received']} samples "
                  f"received, {long['lost']} lost, {long['gaps']} gaps, step p99 "
                  f"{long['p99']:.3f} ms, max {long['max']:.2f} ms."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("# Streaming input benchmark\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
