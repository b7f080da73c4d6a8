"""Self-healing with the real daemon fed the real recordings over LSL, nobody touching it.

Per subject:

* **shifted arm, cold start**: ``emtl-stream train`` on the subject's baseline reps
  0-2 (the bundle carries its held-out shift reference), a :class:`Daemon` started on
  it with an empty state dir and ``[adapt] auto = true``, then the *shifted*
  recording replayed over LSL at real time from its first sample. The published
  ``pred`` messages are scored against the recording's labels (windows whose whole
  span is one class); ``after45`` is the accuracy of the predictions more than 45 s
  after the first one, ``ratio`` that over within-session accuracy (the same model
  on baseline reps 3-4, offline).
* **unshifted arm** (``--unshifted``): the model trained on reps 0-1, the *baseline*
  recording replayed with automatic mode on; accuracy on reps 2-4 and every
  ``model_swapped`` / ``calibration_failed`` event. A swap must not lower accuracy.

Real LSL outlets, real ZeroMQ sockets, the daemon's defaults otherwise. It runs in
real time (a recording of 120 s takes 120 s), so ``--subjects`` picks a subset.

Usage::

    python tools/bench_selfheal_live.py DATA_DIR --subjects 0,4,8 [--unshifted]
        [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

AFTER_S = 45.0
STEADY_S = 0.2  # a window is scored when the class did not change during its span


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(state: Path, sid: str, model: Path):
    from emtl_stream.config import load_config

    env = {"EMTL_STREAM_SOURCE_ID": f'"{sid}"', "EMTL_STREAM_NAME": '""',
           "EMTL_ZMQ_PUB": f'"tcp://127.0.0.1:{_free_port()}"',
           "EMTL_ZMQ_CONTROL": f'"tcp://127.0.0.1:{_free_port()}"',
           "EMTL_STATE_DIR": f'"{state}"', "EMTL_ADAPT_AUTO": "true"}
    return load_config(None, env=env)


def _train(path: Path, reps: str, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "emtl_stream", "train", str(path), "--reps", reps,
                    "--out", str(out)], check=True, capture_output=True)


def _offline_acc(model: Path, path: Path, reps) -> float:
    """Accuracy of the bundle (identity map) on the recording's windows of ``reps``."""
    from emtl_stream.daemon.bundle import SourceBundle
    from emtl_stream.evaluate import EvalSettings, _load
    from emtl_stream.model.classify import MappedClassifier

    from emtl_stream.config import load_config

    bundle = SourceBundle.load(model)
    d = _load(path, EvalSettings.from_config(load_config(None, env={})))
    sel = np.isin(d["rep"], reps)
    m = bundle.components.n_features
    idx = MappedClassifier(bundle.components, np.eye(m)).predict_index(d["X"][sel])
    names = np.asarray(d["class_names"])[d["y"][sel]]
    return float(np.mean(np.asarray(bundle.classes)[idx] == names))


def run_live(model: Path, recording: Path, tmp: Path, score_reps=None) -> dict:
    """Replay ``recording`` to a daemon serving ``model``; the published predictions scored."""
    from emtl_stream.daemon.bundle import SourceBundle
    from emtl_stream.daemon.service import Daemon
    from emtl_stream.io.client import Client
    from emtl_stream.io.recordings import load_recording
    from emtl_stream.sim.replay import Replayer

    sid = f"bench-live-{uuid.uuid4().hex[:8]}"
    config = _config(tmp / f"state-{sid}", sid, model)
    daemon = Daemon(config, bundle=SourceBundle.load(model)).start(timeout=120.0)
    rec = load_recording(recording)
    seen = []
    try:
        client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
        with client.subscribe(("pred", "event")) as sub:
            player = Replayer(rec, name="bench", source_id=sid, markers=False,
                              wait_for_consumer_s=30.0).start()
            t_end = time.monotonic() + rec.emg.shape[0] / rec.fs + 60.0
            while time.monotonic() < t_end:
                got = sub.recv(timeout_s=2.0)
                if got is None:
                    if not player.join(0.0):
                        continue
                    break
                seen.append(got)
            player.stop()
    finally:
        daemon.stop()
    preds = [m for t, m in seen if t == "pred" and not m.get("stale")]
    t0 = preds[0]["t"] if preds else 0.0
    ts = np.array([m["t"] for m in preds])
    a = player.labels_at(ts)
    b = player.labels_at(ts - STEADY_S)
    ok = np.array([x is not None and x == y for x, y in zip(a, b)])
    hit = np.array([m["label"] == x for m, x in zip(preds, a)])
    rel = ts - t0
    events, last_t = [], None  # an event without its own time: the last prediction's
    for topic, m in seen:
        if topic == "pred":
            last_t = m["t"]
        elif m.get("kind") in ("shift_suspected", "calibration_started", "model_swapped",
                               "calibration_failed"):
            t = m["t"] if isinstance(m.get("t"), (int, float)) else last_t
            events.append({k: m.get(k) for k in ("kind", "test", "reason", "model", "trigger")}
                          | {"t_s": None if t is None else round(float(t) - t0, 2)})
    out = {"n_preds": len(preds), "events": events}
    out["after45"] = float(np.mean(hit[ok & (rel > AFTER_S)])) if np.any(ok & (rel > AFTER_S)) \
        else float("nan")
    out["before_swap"] = float(np.mean(hit[ok & (rel <= AFTER_S)]))
    out["all"] = float(np.mean(hit[ok]))
    if score_reps is not None:  # the recording's own rep index per sample, at each pred
        reps = np.asarray(rec.meta["rep"]) if "rep" in rec.meta else None
        if reps is not None and reps.shape[0] == rec.emg.shape[0]:
            i = np.clip(np.round((ts - player.t_start) * rec.fs).astype(int), 0, len(reps) - 1)
            sel = ok & np.isin(reps[i], score_reps)
            out["scored"] = float(np.mean(hit[sel]))
    return out


def subject(data: Path, sid: int, tmp: Path, unshifted: bool) -> dict:
    """Shifted cold start (and with ``unshifted`` the unshifted arm) of one subject."""
    base = data / f"ciil_es_s{sid:02d}_baseline.npz"
    shift = data / f"ciil_es_s{sid:02d}_shifted.npz"
    model = tmp / f"s{sid}.npz"
    _train(base, "0,1,2", model)
    row = {"within": _offline_acc(model, base, (3, 4))}
    live = run_live(model, shift, tmp)
    row.update(after45=live["after45"], ratio=live["after45"] / row["within"],
               first45=live["before_swap"], n_preds=live["n_preds"], events=live["events"])
    if unshifted:
        m2 = tmp / f"s{sid}_u.npz"
        _train(base, "0,1", m2)
        row["u_within"] = _offline_acc(m2, base, (2, 3, 4))
        u = run_live(m2, base, tmp, score_reps=(2, 3, 4))
        row.update(u_live=u.get("scored", u["all"]), u_events=u["events"])
    return row


def to_markdown(rows: dict) -> str:
    """Per-subject table and the mean ratio."""
    def f(v):
        return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"

    def ev(evts, kind):
        return ", ".join("?" if e["t_s"] is None else f"{e['t_s']:.1f}"
                         for e in evts if e["kind"] == kind) or "–"

    lines = ["| subject | within | first 45 s | after 45 s | ratio | shift_suspected s | "
             "model_swapped s | calibration_failed s | unshifted offline | unshifted live | "
             "unshifted swaps |", "|---" * 11 + "|"]
    for sid, r in sorted(rows.items()):
        us = r.get("u_events", [])
        lines.append(f"| {sid} | {f(r['within'])} | {f(r['first45'])} | {f(r['after45'])} | "
                     f"{f(r['ratio'])} | {ev(r['events'], 'shift_suspected')} | "
                     f"{ev(r['events'], 'model_swapped')} | "
                     f"{ev(r['events'], 'calibration_failed')} | {f(r.get('u_within'))} | "
                     f"{f(r.get('u_live'))} | "
                     f"{sum(e['kind'] == 'model_swapped' for e in us) if 'u_live' in r else '–'} |")
    ratios = [r["ratio"] for r in rows.values() if np.isfinite(r["ratio"])]
    lines.append(f"\nMean ratio after 45 s: {np.mean(ratios):.3f} over {len(ratios)} subjects.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--subjects", default="0,4,8")
    p.add_argument("--unshifted", action="store_true")
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sid in [int(s) for s in a.subjects.split(",")]:
            rows[sid] = subject(Path(a.data_dir), sid, Path(tmp), a.unshifted)
            r = rows[sid]
            print(f"subject {sid}: within {r['within']:.3f} after45 {r['after45']:.3f} "
                  f"ratio {r['ratio']:.3f} events {r['events']}", file=sys.stderr, flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1, default=float))
    md = to_markdown(rows)
    print(md)
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
