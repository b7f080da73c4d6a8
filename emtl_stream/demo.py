"""``emtl-stream demo``: the whole product on an embedded default, in under a minute.

A synthetic 8-electrode armband streams over LSL on loopback; the daemon runs on
free loopback ports with a throw-away state directory. The demo

1. trains a source model through a prompted session (the generator follows the prompts),
2. measures accuracy while the generator cycles through the classes,
3. rotates the armband by ``--shift`` electrode spacings and measures again,
4. asks for a prompted recalibration (burst of ``--seconds-per-class`` per class),
5. measures again and prints the table; exit 1 if the accuracy did not recover.

Nothing here is special-cased for the demo: it talks to the daemon through the
same :class:`~emtl_stream.io.client.Client` and wire protocol as any control loop.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
import uuid

import numpy as np

SETTLE_S = 0.35  # after a class change, windows still hold the previous movement
HOLD_S = 1.0  # scored time per class and phase


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _wait_event(sub, kinds, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = sub.recv(timeout_s=0.5)
        if msg and msg[0] == "event" and msg[1].get("kind") in kinds:
            return msg[1]
    raise TimeoutError(f"no {'/'.join(kinds)} event within {timeout_s:.0f} s")


def _score_phase(player, sub, classes, label: str):
    """Cycle the generator through every class; return (accuracy, confusion matrix)."""
    conf = np.zeros((len(classes), len(classes)), int)
    for ci, cls in enumerate(classes):
        player.set_class(cls)
        t_switch = time.monotonic()
        while time.monotonic() - t_switch < SETTLE_S + HOLD_S:
            msg = sub.recv(timeout_s=0.2)
            if msg is None or msg[0] != "pred":
                continue
            if time.monotonic() - t_switch >= SETTLE_S and msg[1]["label"] in classes:
                conf[ci, classes.index(msg[1]["label"])] += 1
    acc = float(np.trace(conf) / max(conf.sum(), 1))
    _say(f"  {label:<26} accuracy {acc:.3f}  ({conf.sum()} windows)")
    return acc, conf


def run_demo(seconds_per_class: float = 1.0, shift: float = 1.0, seed: int = 7,
             plot: str | None = None) -> dict:
    """Run the demo and return its measurements.

    Parameters
    ----------
    seconds_per_class : float
        Calibration burst length per class.
    shift : float
        Electrode shift, in electrode spacings.
    seed : int
        Seed of the synthetic armband.
    plot : str, optional
        PNG path for confusion matrices and the EM trace (needs matplotlib).

    Returns
    -------
    dict
        ``before``, ``shifted``, ``recalibrated`` accuracies, ``burst_s``, ``fit_s``,
        ``roll``, ``confusions`` and ``trace``.
    """
    from .config import load_config
    from .daemon.service import Daemon
    from .io.client import Client
    from .sim.replay import Replayer
    from .sim.synthetic import SyntheticArmband

    t_start = time.monotonic()
    pub = f"tcp://127.0.0.1:{_free_port()}"
    control = f"tcp://127.0.0.1:{_free_port()}"
    source_id = f"emtl-demo-{uuid.uuid4().hex[:8]}"
    armband = SyntheticArmband(n_channels=8, fs=1000.0, seed=seed)
    classes = list(armband.class_names)
    with tempfile.TemporaryDirectory(prefix="emtl-demo-") as state_dir:
        env = {
            "EMTL_STREAM_SOURCE_ID": f'"{source_id}"',
            "EMTL_STREAM_NAME": '""',
            "EMTL_ZMQ_PUB": f'"{pub}"',
            "EMTL_ZMQ_CONTROL": f'"{control}"',
            "EMTL_STATE_DIR": f'"{state_dir}"',
            "EMTL_MODEL_CLASSES": "[" + ", ".join(f'"{c}"' for c in classes) + "]",
            "EMTL_CALIBRATION_LEAD_IN_S": "0.3",
            "EMTL_CALIBRATION_REST_S": "0.5",
        }
        config = load_config(None, env=env)
        _say(f"emtl-stream demo: synthetic armband, 8 electrodes @ 1000 Hz, classes {classes}")
        player = Replayer(armband, name="emtl-demo-armband", source_id=source_id,
                          follow_prompts=pub)
        player.start()
        daemon = Daemon(config)
        _say("  warming up kernels and starting the daemon ...")
        daemon.start()
        client = Client(control=control, pub=pub, timeout_s=10.0)
        try:
            with client.subscribe(("pred", "event")) as sub:
                time.sleep(0.3)
                _say("  prompted training session on the unshifted armband ...")
                reply = client.request("train", classes=classes, seconds_per_class=1.5)
                if not reply.get("ok"):
                    raise RuntimeError(f"train refused: {reply.get('error')}")
                done = _wait_event(sub, ("calibration_done", "calibration_failed"), 90)
                if done["kind"] == "calibration_failed":
                    raise RuntimeError(f"training failed: {done.get('reason')}")
                before, conf_before = _score_phase(player, sub, classes, "before shift")
                player.set_shift(shift)
                shifted, conf_shift = _score_phase(player, sub, classes,
                                                   f"after {shift:g}-electrode shift")
                _say(f"  prompted recalibration, {seconds_per_class:g} s per class ...")
                reply = client.recalibrate(seconds_per_class=seconds_per_class)
                if not reply.get("ok"):
                    raise RuntimeError(f"recalibrate refused: {reply.get('error')}")
                done = _wait_event(sub, ("calibration_done", "calibration_failed"), 90)
                if done["kind"] == "calibration_failed":
                    raise RuntimeError(f"recalibration failed: {done.get('reason')}")
                after, conf_after = _score_phase(player, sub, classes, "after recalibration")
        finally:
            daemon.stop()
            player.stop()
    result = {
        "before": before, "shifted": shifted, "recalibrated": after,
        "burst_s": seconds_per_class * len(classes), "fit_s": float(done.get("fit_s", np.nan)),
        "roll": done.get("roll"), "n_iter": done.get("n_iter"),
        "confusions": {"before": conf_before, "shifted": conf_shift, "recalibrated": conf_after},
        "trace": list(getattr(daemon, "last_fit", {}).get("trace", [])),
        "classes": classes, "elapsed_s": time.monotonic() - t_start,
    }
    if plot:
        _plot(result, plot)
    return result


def _plot(result: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'emtl_stream[plot]'") from exc
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    for ax, key in zip(axes, ("before", "shifted", "recalibrated")):
        c = result["confusions"][key]
        ax.imshow(c / np.maximum(c.sum(1, keepdims=True), 1), vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{key}: accuracy {result[key]:.2f}")
        ax.set_xticks(range(len(result["classes"])), result["classes"], rotation=45)
        ax.set_yticks(range(len(result["classes"])), result["classes"])
        ax.set_xlabel("predicted")
    axes[0].set_ylabel("performed")
    axes[3].plot(range(1, len(result["trace"]) + 1), result["trace"], "o-")
    axes[3].set_title("transfer EM: penalised log-likelihood")
    axes[3].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(args) -> int:
    """CLI entry: prints the table; exit 0 when recalibration recovered the accuracy."""
    r = run_demo(args.seconds_per_class, args.shift, args.seed, args.plot)
    print()
    print("| phase | accuracy |")
    print("|---|---|")
    print(f"| before shift | {r['before']:.3f} |")
    print(f"| after {args.shift:g}-electrode shift | {r['shifted']:.3f} |")
    print(f"| after recalibration | {r['recalibrated']:.3f} |")
    print()
    print(f"burst {r['burst_s']:.1f} s ({args.seconds_per_class:g} s x {len(r['classes'])} classes), "
          f"transfer-EM fit {1e3 * r['fit_s']:.0f} ms ({r['n_iter']} iterations, ring roll "
          f"{r['roll']}), demo took {r['elapsed_s']:.0f} s")
    if args.plot:
        print(f"plot written to {args.plot}")
    recovered = r["recalibrated"] >= args.min_recovery and r["recalibrated"] > r["shifted"]
    if not recovered:
        print(f"recalibration did not recover (needed >= {args.min_recovery:.2f})", file=sys.stderr)
    return 0 if recovered else 1
