"""Self-healing targets on the CIIL electrode-shift recordings, by offline replay.

This is an **offline replay of the daemon's decision logic**, not the daemon: the
recordings' windows are fed in stream order (50 ms apart) to the same
:class:`~emtl_stream.daemon.shift.ShiftWatch` and
:func:`~emtl_stream.daemon.adapt.fit_unlabelled` the daemon uses, with the automatic
mode's rules: on a ``shift_suspected`` event collect ``ADAPT_S`` s of windows, fit,
swap the map in when the guard accepts (after the measured fit time, converted to
windows, while the old map keeps predicting), otherwise wait ``COOLDOWN_S`` s and
re-arm. No LSL, no ZeroMQ, no threads.

Per subject (source model trained on baseline reps 0-2, detector reference from
baseline rep 3, held out):

* shifted arm, cold start: the shifted recording from its first window; accuracy of
  the live map on the windows after ``AFTER_S`` s, relative to within-session accuracy
  (baseline rep 4 under the source model);
* unshifted arm: source trained on baseline reps 0-1, reference from rep 2, stream of
  reps 3-4 in automatic mode; and a forced zero-label fit on the first ``ADAPT_S`` s of
  that stream (what a false alarm would trigger) — accepted or not, does it lower
  accuracy on the rest?

``--detector`` instead measures the shift detector alone: the variants of
:func:`emtl_stream.eval_unlabelled.detector_configs` (the default, the ring test
alone, the likelihood+MMD rule) on every subject's streams (held-out baseline reps
then the shift, and the stream after a calibration), plus ``--synthetic-hours`` of
unshifted synthetic-armband stream for the false-alarm rate.

Usage::

    python tools/bench_selfheal.py DATA_DIR [--subjects 0,1] [--markdown FILE] [--json FILE]
    python tools/bench_selfheal.py DATA_DIR --detector [--synthetic-hours 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from emtl_stream.config import load_config
from emtl_stream.daemon.adapt import fit_unlabelled
from emtl_stream.daemon.shift import ShiftReference, ShiftWatch
from emtl_stream.evaluate import EvalSettings, _load, find_subjects
from emtl_stream.model.classify import MappedClassifier
from emtl_stream.model.gmm import LabelledGMM

ADAPT_S = 20.0  # unlabelled seconds collected after an event (the [adapt] seconds)
COOLDOWN_S = 30.0  # after a refused fit, before the detector may trigger another
AFTER_S = 45.0  # accuracy is measured on windows after this much stream time


def _source(X, y, st):
    return LabelledGMM(n_components_per_class=st.n_components_per_class,
                       covariance_type=st.covariance_type, random_state=0).fit(X, y)


def replay(comp, ref, X, y, st) -> dict:
    """Replay the automatic mode over windows X (labels y only for scoring)."""
    step = st.step_ms / 1000.0
    m = comp.n_features
    H, b = np.eye(m), np.zeros(m)
    rotation = 0.0  # the live map's, as the daemon records it (identity: 0)
    clf = MappedClassifier(comp, H, b)
    watch = ShiftWatch(m, ref, components=comp, ring_channels=st.ring_channels)
    n_collect = int(ADAPT_S / step)
    collecting, pending, cooldown_until = None, None, -1
    correct = np.zeros(len(X), bool)
    log = []
    for i in range(len(X)):
        x = X[i]
        if pending is not None and i >= pending[0]:  # the worker's fit is done: swap
            _, res, Xc = pending
            pending = None
            if res.accepted:
                H, b = res.H, res.b
                rotation = res.metrics.get("map_rotation")
                clf = MappedClassifier(comp, H, b)
                watch.reset(ShiftReference.from_windows(comp, H, b, Xc, source="live"))
            else:
                cooldown_until = i + int(COOLDOWN_S / step)
            log.append({"t": i * step, "accepted": res.accepted, "reason": res.reason})
        idx = clf.predict_index(x[None])[0]
        correct[i] = idx >= 0 and comp.classes[idx] == y[i]
        ll = float(clf.log_marginal(x[None])[0])
        ev = watch.update(ll, x @ H.T + b, i * step, x=x, H=H, b=b)
        if collecting is not None:
            collecting.append(x)
            if len(collecting) >= n_collect:
                Xc = np.asarray(collecting)
                collecting = None
                t0 = time.perf_counter()
                res = fit_unlabelled(comp, Xc, H, b, transfer_kwargs=st.transfer,
                                     ring_channels=st.ring_channels, live_rotation=rotation)
                fit_windows = int(np.ceil((time.perf_counter() - t0) / step))
                pending = (i + fit_windows, res, Xc)
        elif ev is not None and pending is None:
            log.append({"t": i * step, "event": ev["test"]})
            if i >= cooldown_until:
                collecting = []
        if cooldown_until == i:
            watch.reset(watch.reference)  # re-arm after the cooldown
    return {"correct": correct, "log": log}


def subject(b_path, s_path, st) -> dict:
    base, shift = _load(b_path, st), _load(s_path, st)
    m = base["X"].shape[1]
    I = np.eye(m)
    step = st.step_ms / 1000.0
    out = {}
    # shifted arm, cold start
    tr = np.isin(base["rep"], (0, 1, 2))
    comp = _source(base["X"][tr], base["y"][tr], st).to_components()
    ref = ShiftReference.from_windows(comp, I, np.zeros(m), base["X"][base["rep"] == 3])
    w = base["rep"] == 4
    clf = MappedClassifier(comp, I, None)
    within = float(np.mean(comp.classes[clf.predict_index(base["X"][w])] == base["y"][w]))
    r = replay(comp, ref, shift["X"], shift["y"], st)
    after = np.arange(len(shift["X"])) * step >= AFTER_S
    out["within"] = within
    out["no_adapt_after45"] = float(np.mean(
        comp.classes[clf.predict_index(shift["X"][after])] == shift["y"][after]))
    out["healed_after45"] = float(np.mean(r["correct"][after]))
    out["ratio"] = out["healed_after45"] / within
    events = [e for e in r["log"] if "event" in e]
    swaps = [e for e in r["log"] if e.get("accepted")]
    out["first_event_s"] = events[0]["t"] if events else None
    out["first_swap_s"] = swaps[0]["t"] if swaps else None
    out["fits"] = sum(1 for e in r["log"] if "accepted" in e)
    # unshifted arm
    tr = np.isin(base["rep"], (0, 1))
    comp = _source(base["X"][tr], base["y"][tr], st).to_components()
    ref = ShiftReference.from_windows(comp, I, np.zeros(m), base["X"][base["rep"] == 2])
    sel = np.isin(base["rep"], (3, 4))
    Xu, yu = base["X"][sel], base["y"][sel]
    clf = MappedClassifier(comp, I, None)
    fixed = comp.classes[clf.predict_index(Xu)] == yu
    r = replay(comp, ref, Xu, yu, st)
    out["unshifted_fixed"] = float(np.mean(fixed))
    out["unshifted_auto"] = float(np.mean(r["correct"]))
    out["unshifted_swaps"] = sum(1 for e in r["log"] if e.get("accepted"))
    out["unshifted_events"] = sum(1 for e in r["log"] if "event" in e)
    n = int(ADAPT_S / step)
    res = fit_unlabelled(comp, Xu[:n], I, None, transfer_kwargs=st.transfer,
                         ring_channels=st.ring_channels, live_rotation=0.0)
    rest = slice(n, None)
    out["forced_accepted"] = bool(res.accepted)
    out["forced_before"] = float(np.mean(fixed[rest]))
    out["forced_after"] = float(np.mean(
        comp.classes[MappedClassifier(comp, res.H, res.b).predict_index(Xu[rest])] == yu[rest]))
    return out


def to_markdown(rows: dict) -> str:
    cols = ["within", "no_adapt_after45", "healed_after45", "ratio", "first_event_s",
            "first_swap_s", "fits", "unshifted_fixed", "unshifted_auto", "unshifted_events",
            "unshifted_swaps", "forced_accepted", "forced_before", "forced_after"]

    def f(v):
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| subject | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for sid, r in sorted(rows.items()):
        lines.append(f"| {sid} | " + " | ".join(f(r[c]) for c in cols) + " |")
    mean = {}
    for c in cols:
        vals = [r[c] for r in rows.values() if r[c] is not None]
        mean[c] = float(np.mean(vals)) if vals else None
    lines.append("| **mean** | " + " | ".join(f(mean[c]) for c in cols) + " |")
    worse = sum(1 for r in rows.values() if r["forced_after"] < r["forced_before"] - 1e-9)
    lower = sum(1 for r in rows.values() if r["unshifted_auto"] < r["unshifted_fixed"] - 1e-9)
    ratio = float(np.mean([r["ratio"] for r in rows.values()]))
    lines += ["", f"Shifted arm after {AFTER_S:g} s: mean accuracy ratio to within-session "
              f"{ratio:.3f}. Unshifted arm: automatic mode lowered accuracy for {lower} of "
              f"{len(rows)} subjects; a forced zero-label fit lowered it for {worse}."]
    return "\n".join(lines)


def detector_main(args, st, subjects) -> int:
    """``--detector``: delays and false alarms (real streams and synthetic hours)."""
    from emtl_stream.eval_unlabelled import (detection_subject, poisson_upper,
                                             summarize, synthetic_false_alarms)
    from emtl_stream.evaluate import _load

    keep = ("default", "ring")
    rows = {}
    for sid, b, s in find_subjects(Path(args.data_dir), subjects):
        full = detection_subject(_load(b, st), _load(s, st), st, variants=keep)
        rows[sid] = {k: v for k, v in full.items()
                     if not k.startswith("det_") or k.split("_")[1] in keep}
        print(f"subject {sid}: default fa {rows[sid]['det_default_fa']} + "
              f"{rows[sid]['det_default_fa_after_cal']} delays "
              f"{rows[sid]['det_default_delays']}", file=sys.stderr, flush=True)
    summ = summarize(rows)
    if args.json:  # the real-data rows first: the synthetic run takes a while
        Path(args.json).write_text(json.dumps({"subjects": rows, "summary": summ},
                                              indent=1, default=str))
    syn = synthetic_false_alarms(args.synthetic_hours, progress=lambda i, fa, h: print(
        f"synthetic seed {i}: {fa} false alarms in {h:.2f} h", file=sys.stderr, flush=True))
    syn["upper95_per_h"] = poisson_upper(syn["false_alarms"], syn["hours"])
    lines = ["| detector | false alarms (held-out reps) | h | false alarms (after a "
             "calibration) | h | per h | 95 % upper per h | median delay s | p90 delay s "
             "| within 5 s | misses |", "|---" * 11 + "|"]
    for c in keep:
        d = summ[f"det_{c}"]
        lines.append(f"| {c} | {d['false_alarms']} | {d['unshifted_hours']:.2f} | "
                     f"{d['false_alarms_after_cal']} | {d['after_cal_hours']:.2f} | "
                     f"{d['fa_per_hour_all']:.2f} | {d['fa_upper95_all']:.1f} | "
                     f"{d['median_delay_s']:.2f} | {d['p90_delay_s']:.2f} | "
                     f"{d['share_within_5s']:.2f} | {d['misses']} |")
    sd = [x["delay_s"] for x in syn["delays"]]
    lines += ["", f"Synthetic armband, default detector: {syn['false_alarms']} false alarms in "
              f"{syn['hours']:.2f} h of unshifted stream (95 % upper bound "
              f"{syn['upper95_per_h']:.2f} per h); delay after a shift of 1 / 0.5 spacings: "
              + ", ".join("miss" if v is None else f"{v:.2f}" for v in sd) + " s."]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"subjects": rows, "summary": summ,
                                               "synthetic": syn}, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("--subjects", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--detector", action="store_true", help="the shift detector alone")
    p.add_argument("--synthetic-hours", type=float, default=4.0)
    args = p.parse_args(argv)
    st = EvalSettings.from_config(load_config(None, env={}))
    subjects = {int(s) for s in args.subjects.split(",")} if args.subjects else None
    if args.detector:
        return detector_main(args, st, subjects)
    rows = {}
    for sid, b, s in find_subjects(Path(args.data_dir), subjects):
        rows[sid] = subject(b, s, st)
        print(f"subject {sid}: {rows[sid]}", file=sys.stderr, flush=True)
    table = to_markdown(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
