"""Ramp training against static holds, measured end to end through a running daemon.

``python -m emtl_stream.eval_speed_live [--seeds 0,1,2] [--json F]``

A synthetic user (:class:`~emtl_stream.sim.synthetic_ramps.PromptPerformer`)
streams a synthetic armband over a real LSL outlet, on a continuous sample clock
with explicit timestamps, and follows the daemon's ``prompt`` messages over ZeroMQ.
Per seed:

1. the source model and its speed calibration are trained offline on static holds
   at the generator's strength (as ``emtl-stream train`` on a hold recording);
2. **hold**: the user holds every movement at known activation levels
   (``levels``, 1 = the generator's strength) and the published ``pred`` speeds
   are scored against the level;
3. a prompted ramp session (``recalibrate`` with ``ramp: true``) runs: the user
   ramps every movement slowly from rest to ``ramp_high``;
4. **ramp**: the same graded holds are scored again with the new calibration.

Scores (per movement, then averaged): Spearman rank correlation of the published
speed with the level; mean absolute error against the linear target
``(level - levels[0]) / (levels[-1] - levels[0])``; the fraction of levels whose
median speed lies strictly inside (0.05, 0.95) ("usable": proportional, not stuck
at 0 or 1). Windows within ``SETTLE_S`` of a level change are left out.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: A prediction is scored only if its window lies this long after a level change (s):
#: the window (200 ms), the generator's activation lag and the two-window smoothing.
SETTLE_S = 0.45
DEFAULT_LEVELS = tuple(np.round(np.linspace(0.1, 1.0, 10), 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FollowingOutlet:
    """A thread streaming a :class:`PromptPerformer` over LSL while following prompts.

    Samples go out on a continuous sample clock with explicit timestamps (a slow
    iteration pushes a bigger chunk, never a timestamp gap).

    Parameters
    ----------
    performer : PromptPerformer
    source_id : str
        LSL source_id of the outlet.
    pub : str
        The daemon's PUB address (its ``prompt`` topic is followed).
    name : str
        LSL stream name.
    """

    def __init__(self, performer, source_id: str, pub: str, name: str = "emtl-live-eval"):
        from .io.client import Client

        self.client = Client(pub=pub, timeout_s=5.0)  # subscriptions only, in the thread
        self.performer = performer
        self.source_id = source_id
        self.pub = pub
        self.name = name
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emtl-eval-outlet", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "FollowingOutlet":
        """Open the outlet and start streaming; returns once it is open."""
        self._thread.start()
        if not self._started.wait(10.0):
            raise RuntimeError("the evaluation outlet did not start")
        if self.error is not None:
            raise RuntimeError(f"the evaluation outlet failed: {self.error}")
        return self

    def stop(self) -> None:
        """Stop streaming and close the outlet."""
        self._stop.set()
        self._thread.join(5.0)

    def perform(self, class_, level: float = 1.0) -> float:
        """Hold ``class_`` at ``level`` from now on; returns the LSL time of the change.

        Parameters
        ----------
        class_ : str or int
        level : float
            Activation level (1 = the generator's strength).
        """
        from .io.lsl_inlet import local_clock

        with self.lock:
            self.performer.perform(class_, level)
            return float(local_clock())

    def _run(self) -> None:
        from .io.lsl_inlet import local_clock
        from .io.lsl_outlet import EMGOutlet

        arm = self.performer.armband
        sub = None
        try:
            outlet = EMGOutlet(self.name, arm.n_channels, arm.fs, self.source_id)
            sub = self.client.subscribe(("prompt",))
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._started.set()
            return
        self._started.set()
        fs = arm.fs
        base, sent = float(local_clock()), 0
        try:
            while not self._stop.is_set():
                while (got := sub.recv(timeout_s=0.0)) is not None:
                    with self.lock:
                        self.performer.prompt(got[1], float(local_clock()))
                due = int((local_clock() - base) * fs) - sent
                if due > 0:
                    with self.lock:
                        block = self.performer.generate(due, base + sent / fs)
                    outlet.push(block, base + (sent + due - 1) / fs)
                    sent += due
                self._stop.wait(0.005)
        finally:
            sub.close()
            outlet.close()
            self.client.close()


def score_holds(preds, segments, levels, settle_s: float = SETTLE_S) -> dict:
    """Score published speeds against the held levels.

    Parameters
    ----------
    preds : list of dict
        ``pred`` messages (``t``, ``speed``).
    segments : list of (t_start, t_end, class, level)
        What was performed when (LSL time).
    levels : sequence of float
        The levels held, in increasing order.
    settle_s : float
        Windows ending less than this after a segment start are left out.

    Returns
    -------
    dict
        ``spearman``, ``mae``, ``usable`` averaged over classes, and ``per_class``.
    """
    from scipy import stats

    lo, hi = float(levels[0]), float(levels[-1])
    rows: dict[str, list[tuple[float, float]]] = {}
    for t0, t1, cls, level in segments:
        for m in preds:
            if t0 + settle_s <= m["t"] <= t1 and "speed" in m:
                rows.setdefault(cls, []).append((level, float(m["speed"])))
    per_class = {}
    for cls, pairs in rows.items():
        lev, sp = np.array(pairs).T
        med = np.array([np.median(sp[lev == v]) for v in levels if np.any(lev == v)])
        rho = stats.spearmanr(sp, lev)[0] if np.ptp(sp) > 0 else 0.0
        per_class[cls] = {"spearman": float(rho),
                          "mae": float(np.mean(np.abs(sp - (lev - lo) / (hi - lo)))),
                          "usable": float(np.mean((med > 0.05) & (med < 0.95))),
                          "windows": int(len(sp))}
    out = {k: float(np.mean([r[k] for r in per_class.values()]))
           for k in ("spearman", "mae", "usable")}
    out["per_class"] = per_class
    return out


def graded_holds(follower, sub, classes, levels, hold_s: float) -> dict:
    """Hold each class at each level for ``hold_s``; :func:`score_holds` of the result.

    Parameters
    ----------
    follower : FollowingOutlet
    sub : Subscription
        Subscribed to ``pred``.
    classes : sequence of str
    levels : sequence of float
    hold_s : float
    """
    preds, segments = [], []
    for cls in classes:
        for level in levels:
            t0 = follower.perform(cls, level)
            end = time.monotonic() + hold_s
            while time.monotonic() < end:
                got = sub.recv(timeout_s=0.1)
                if got is not None and got[0] == "pred":
                    preds.append(got[1])
            segments.append((t0, t0 + hold_s, cls, float(level)))
        follower.perform(follower.performer.armband.class_names[0])
    return score_holds(preds, segments, levels)


def run_seed(seed: int, *, classes=None, levels=DEFAULT_LEVELS, hold_s: float = 1.2,
             ramp_seconds: float = 4.0, fs: float = 500.0, n_channels: int = 8,
             train_seconds: float = 2.0, state_dir=None) -> dict:
    """One seed of the study (see the module docstring); a real daemon, LSL and ZeroMQ.

    Parameters
    ----------
    seed : int
        Armband seed (muscles, electrodes, noise).
    classes : sequence of str, optional
        Movements to ramp and score (default: every non-rest class).
    levels : sequence of float
        Activation levels of the graded holds, increasing.
    hold_s : float
        Seconds per graded hold.
    ramp_seconds : float
        Recorded seconds per ramp prompt.
    fs : float
    n_channels : int
    train_seconds : float
        Seconds of static hold per class for the source model.
    state_dir : path, optional
        The daemon's state folder (default: a temporary one).

    Returns
    -------
    dict
        ``hold`` and ``ramp`` (:func:`score_holds`), ``calibration_done`` (the event),
        ``speed_hold`` and ``speed_ramp`` (the calibrations).
    """
    from .config import load_config
    from .daemon.bundle import fit_source_model, make_bundle
    from .daemon.service import Daemon
    from .io.client import Client
    from .model.speed import calibrate_bundle_speed
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import featurize
    from .sim.synthetic import SyntheticArmband
    from .sim.synthetic_ramps import PromptPerformer

    arm = SyntheticArmband(n_channels=n_channels, fs=fs, seed=seed)
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=n_channels, fs=fs)
    Xs, ys = [], []
    settle = int(0.3 * fs)
    for cls in arm.class_names:
        emg = arm.generate(settle + int(train_seconds * fs), cls)[settle:]
        X, _, _ = featurize(emg, fs, ext, 200.0, 50.0)
        Xs.append(X)
        ys += [cls] * len(X)
    X, y = np.vstack(Xs), np.asarray(ys)
    model = fit_source_model(X, y, kind="lgmm", covariance_type="tied")
    bundle = make_bundle(model, ext, 200.0, 50.0, n_channels, fs, source="static holds")
    bundle.meta["speed"] = calibrate_bundle_speed(bundle, X, y)
    moving = list(classes or arm.class_names[1:])

    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="emtl-ramp-eval-")
        state_dir = tmp.name
    sid = f"emtl-ramp-eval-{seed}-{time.monotonic_ns()}"
    pub, control = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    config = load_config(None, env={
        "EMTL_STREAM_SOURCE_ID": f'"{sid}"', "EMTL_STREAM_NAME": '""',
        "EMTL_ZMQ_PUB": f'"{pub}"', "EMTL_ZMQ_CONTROL": f'"{control}"',
        "EMTL_STATE_DIR": f'"{Path(state_dir) / "state"}"',
        "EMTL_CALIBRATION_LEAD_IN_S": "0.5", "EMTL_CALIBRATION_REST_S": "1.0"})
    follower = FollowingOutlet(PromptPerformer(arm), sid, pub).start()
    daemon = Daemon(config, bundle=bundle).start(timeout=120.0)
    client = Client(control, pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred", "event")) as sub:
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                got = sub.recv(timeout_s=0.5)
                if got is not None and got[0] == "pred":
                    break
            else:
                raise RuntimeError("the daemon published no prediction within 30 s")
            hold = graded_holds(follower, sub, moving, levels, hold_s)
            reply = client.recalibrate(ramp=True, classes=moving, seconds_per_class=ramp_seconds)
            if not reply.get("ok"):
                raise RuntimeError(f"ramp session refused: {reply.get('error')}")
            done = None
            deadline = time.monotonic() + float(reply["duration_s"]) + 30.0
            while done is None and time.monotonic() < deadline:
                got = sub.recv(timeout_s=0.5)
                if got is not None and got[0] == "event" and got[1]["kind"] in (
                        "calibration_done", "calibration_failed"):
                    done = got[1]
            if done is None or done["kind"] != "calibration_done":
                raise RuntimeError(f"the ramp session did not finish: {done}")
            ramp = graded_holds(follower, sub, moving, levels, hold_s)
        return {"hold": hold, "ramp": ramp, "calibration_done": done,
                "speed_hold": bundle.meta["speed"],
                "speed_ramp": daemon.live.bundle.meta["speed"]}
    finally:
        client.close()
        daemon.stop()
        follower.stop()
        if tmp is not None:
            tmp.cleanup()


def study(seeds=(0, 1, 2), **kwargs) -> dict:
    """:func:`run_seed` for every seed, and the means over seeds.

    Parameters
    ----------
    seeds : sequence of int
    **kwargs
        Passed to :func:`run_seed`.

    Returns
    -------
    dict
        ``{"seeds": {seed: run}, "mean": {"hold": {...}, "ramp": {...}}}``.
    """
    runs = {int(s): run_seed(int(s), **kwargs) for s in seeds}
    mean = {p: {k: float(np.mean([r[p][k] for r in runs.values()]))
                for k in ("spearman", "mae", "usable")} for p in ("hold", "ramp")}
    return {"seeds": runs, "mean": mean}


def to_markdown(result) -> str:
    """Render a :func:`study` result as Markdown tables (means over seeds, and per seed).

    Parameters
    ----------
    result : dict
        What :func:`study` returns.
    """
    lines = ["| speed calibration | Spearman(speed, level) | MAE to linear target | "
             "usable levels |", "|---|---|---|---|"]
    names = {"hold": "static holds (training)", "ramp": "prompted ramp session"}
    for p in ("hold", "ramp"):
        r = result["mean"][p]
        lines.append(f"| {names[p]} | {r['spearman']:.3f} | {r['mae']:.3f} | "
                     f"{r['usable']:.2f} |")
    lines += ["", "| seed | hold: Spearman | ramp: Spearman | hold: MAE | ramp: MAE |",
              "|---|---|---|---|---|"]
    for s, r in result["seeds"].items():
        lines.append(f"| {s} | {r['hold']['spearman']:.3f} | {r['ramp']['spearman']:.3f} | "
                     f"{r['hold']['mae']:.3f} | {r['ramp']['mae']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the study from the command line, print Markdown, optionally write JSON.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    p = argparse.ArgumentParser(prog="python -m emtl_stream.eval_speed_live",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated armband seeds")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)
    result = study([int(s) for s in args.seeds.split(",") if s.strip()])
    print(to_markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
