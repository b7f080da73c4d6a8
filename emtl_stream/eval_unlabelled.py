"""``emtl-stream evaluate DATA_DIR --unlabelled``: zero-label recalibration, shift detection.

Both on the CIIL electrode-shift recordings (Campbell et al. 2024; the shared EMG data set).

Protocol, per subject (same features and source model as :mod:`emtl_stream.evaluate`:
the daemon's defaults, source trained on baseline reps 0-2, ``within`` on reps 3-4,
accuracies on shifted reps 2-7):

* ``zl_raw`` / ``zl``: ``TransferEM.fit(X, None)`` on the unlabelled windows of shifted
  reps 0-1 in stream order, at most :data:`BALANCED_SECONDS` s of windows (balanced
  classes); ``zl_raw`` is the fitted map, ``zl`` what the daemon keeps after the guard
  of :func:`emtl_stream.daemon.adapt.fit_unlabelled` (the identity when refused);
  ``zl_ok`` is 1 when the guard accepted.
* ``zlrest_raw`` / ``zlrest`` / ``zlrest_ok``: the same on a rest-dominated set: all
  rest windows of shifted reps 0-1 plus the first windows of each other class's
  segments so that rest is :data:`REST_SHARE` of the windows (about 8 s of stream).
* ``ot_*``: optimal transport (POT, optional extra ``ot``) between the source training
  windows and the same balanced shifted windows; shifted test windows are mapped to
  the source domain (``inverse_transform``) and classified by the source model.
  ``ot_emd``, ``ot_sinkhorn``, ``ot_linear`` zero-label; ``ot_emd_burst`` /
  ``ot_sinkhorn_burst`` with the labels of the first :data:`BURST_S` s of each class
  of shifted rep 0 (class-regularised / semi-supervised transport).
* detector rows: a model trained on baseline reps not in {a, b}, its reference from
  baseline rep a (held out), a stream of baseline rep b then all shifted windows, for
  every b and a = b + 1 (mod 5). False alarms per hour on the unshifted part; delay
  from the first shifted window to the first event (``miss`` when none comes within
  :data:`MAX_DELAY_S`), for the likelihood test alone, the MMD test alone and the
  daemon's default rule (both tests, persisted 1 s).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from .logs import logger

BALANCED_SECONDS = 30.0
REST_SHARE = 0.7
BURST_S = 1.0
MAX_DELAY_S = 60.0
#: Thresholds swept to compare the two tests at equal false alarms: likelihood
#: (spreads, nats per feature) and MMD spreads.
LL_SWEEP = ((4.0, 1.0), (4.0, 0.5), (4.0, 0.25), (6.0, 0.25), (8.0, 0.25))
MMD_SWEEP = (6.0, 9.0, 12.0, 16.0)
CAL_REPS, TEST_REPS = (0, 1), (2, 3, 4, 5, 6, 7)


def _acc(comp, H, b, X, y) -> float:
    from .model.classify import MappedClassifier

    idx = MappedClassifier(comp, H, b).predict_index(X)
    return float(np.mean(comp.classes[idx] == y))


def _source(X, y, settings):
    from .model.gmm import LabelledGMM

    return LabelledGMM(n_components_per_class=settings.n_components_per_class,
                       covariance_type=settings.covariance_type, random_state=0).fit(X, y)


def balanced_set(shift: dict, step_s: float) -> np.ndarray:
    """Return the indices of the balanced unlabelled set: shifted reps 0-1, ≤ BALANCED_SECONDS s.

    Parameters
    ----------
    shift : dict
        The shifted session's features (:func:`emtl_stream.pipeline.offline.ciil_features`).
    step_s : float
        Window hop in seconds.
    """
    idx = np.flatnonzero(np.isin(shift["rep"], CAL_REPS))
    return idx[: int(BALANCED_SECONDS / step_s)]


def rest_set(shift: dict, rest_class: int) -> np.ndarray:
    """Return the indices of the rest-dominated set (REST_SHARE rest), in stream order.

    Parameters
    ----------
    shift : dict
        The shifted session's features.
    rest_class : int
        Index of the rest class.
    """
    cal = np.isin(shift["rep"], CAL_REPS)
    rest = np.flatnonzero(cal & (shift["y"] == rest_class))
    segs = [s for s in np.unique(shift["seg_index"][cal])
            if shift["y"][shift["seg_index"] == s][0] != rest_class]
    per_seg = max(1, int(round(len(rest) * (1 - REST_SHARE) / REST_SHARE / len(segs))))
    other = np.concatenate([np.flatnonzero(shift["seg_index"] == s)[:per_seg] for s in segs])
    return np.sort(np.concatenate([rest, other]))


def _ot_rows(Xs, ys, Xc, yc_burst, comp, Xt, yt) -> dict:
    """POT baselines; empty when POT is not installed."""
    try:
        import ot
    except ImportError:
        return {}
    out = {}
    m = comp.n_features
    eye = np.eye(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A row scale keeps the Sinkhorn kernel well conditioned (costs in units of
        # the median squared distance).
        methods = {
            "ot_emd": lambda: ot.da.EMDTransport(),
            "ot_sinkhorn": lambda: ot.da.SinkhornTransport(reg_e=0.1, norm="median"),
            "ot_linear": lambda: ot.da.LinearTransport(),
        }
        for name, make in methods.items():
            tr = make().fit(Xs=Xs, ys=ys, Xt=Xc)
            out[name] = _acc(comp, eye, None, tr.inverse_transform(Xt=Xt), yt)
        semi = {"ot_emd_burst": lambda: ot.da.EMDTransport(),
                "ot_sinkhorn_burst": lambda: ot.da.SinkhornTransport(reg_e=0.1, norm="median")}
        for name, make in semi.items():
            tr = make().fit(Xs=Xs, ys=ys, Xt=Xc, yt=yc_burst)
            out[name] = _acc(comp, eye, None, tr.inverse_transform(Xt=Xt), yt)
    return out


def zero_label_subject(base: dict, shift: dict, settings) -> dict:
    """Zero-label and optimal-transport rows of one subject (see the module docstring).

    Parameters
    ----------
    base, shift : dict
        The subject's baseline and shifted features
        (:func:`emtl_stream.pipeline.offline.ciil_features`).
    settings : EvalSettings
        What is evaluated.
    """
    from .daemon.adapt import fit_unlabelled
    from .model.transfer import TransferEM

    train = np.isin(base["rep"], (0, 1, 2))
    src = _source(base["X"][train], base["y"][train], settings)
    comp = src.to_components()
    m = comp.n_features
    eye = np.eye(m)
    within = np.isin(base["rep"], (3, 4))
    test = np.isin(shift["rep"], TEST_REPS)
    Xt, yt = shift["X"][test], shift["y"][test]
    out = {"within": _acc(comp, eye, None, base["X"][within], base["y"][within]),
           "no_adapt": _acc(comp, eye, None, Xt, yt)}
    rest_class = int(np.flatnonzero(np.char.find(
        np.asarray(base["class_names"], dtype=str), "No_Motion") >= 0)[0])
    sets = {"zl": balanced_set(shift, settings.step_ms / 1000.0),
            "zlrest": rest_set(shift, rest_class)}
    for name, idx in sets.items():
        X = shift["X"][idx]
        out[f"{name}_seconds"] = len(idx) * settings.step_ms / 1000.0
        if name == "zlrest":
            out["zlrest_rest_share"] = float(np.mean(shift["y"][idx] == rest_class))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tem = TransferEM(comp, ring_channels=settings.ring_channels, **settings.transfer)
            tem.fit(X, None)
        out[f"{name}_raw"] = _acc(comp, tem.H_, tem.b_, Xt, yt)
        t0 = time.perf_counter()
        res = fit_unlabelled(comp, X, eye, None, transfer_kwargs=settings.transfer,
                             ring_channels=settings.ring_channels)
        out[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0)
        out[name] = _acc(comp, res.H, res.b, Xt, yt)
        out[f"{name}_ok"] = float(res.accepted)
    bal = sets["zl"]
    burst = np.where((shift["rep"][bal] == 0) & (shift["offset_s"][bal] <= BURST_S + 1e-9),
                     shift["y"][bal], -1)
    out.update(_ot_rows(base["X"][train], base["y"][train], shift["X"][bal], burst, comp,
                        Xt, yt))
    return out


# ---------------------------------------------------------------- detection
def detector_streams(base: dict, shift: dict, settings):
    """(components, reference, X stream, index of the first shifted window) per b.

    Parameters
    ----------
    base, shift : dict
        The subject's baseline and shifted features.
    settings : EvalSettings
        What is evaluated.
    """
    from .daemon.shift import ShiftReference

    for b in range(5):
        a = (b + 1) % 5
        train = ~np.isin(base["rep"], (a, b))
        comp = _source(base["X"][train], base["y"][train], settings).to_components()
        m = comp.n_features
        ref = ShiftReference.from_windows(comp, np.eye(m), np.zeros(m),
                                          base["X"][base["rep"] == a])
        Xb = base["X"][base["rep"] == b]
        # shifted windows up to the miss limit: a later event would not count anyway
        n_shift = int(MAX_DELAY_S * 1000.0 / settings.step_ms) + 1
        yield comp, ref, np.vstack([Xb, shift["X"][:n_shift]]), len(Xb)


def _run_watch(comp, ref, X, step_s, **thresholds):
    from .daemon.shift import ShiftWatch
    from .model.classify import MappedClassifier

    m = comp.n_features
    ll = MappedClassifier(comp, np.eye(m), np.zeros(m)).log_marginal(X)
    mmd_on = thresholds.get("mmd_spreads", 0.0) < 1e11  # skip the MMD cost when it is off
    watch = ShiftWatch(m, ref, components=comp if mmd_on else None, **thresholds)
    t0 = time.perf_counter()
    events = [(i, e) for i in range(len(X)) if (e := watch.update(ll[i], X[i], i * step_s))]
    per_window_us = 1e6 * (time.perf_counter() - t0) / len(X)
    return events, per_window_us


def detection_subject(base: dict, shift: dict, settings, only_default: bool = False) -> dict:
    """Measure delays and false alarms of the shift detectors on one subject.

    The likelihood test, the MMD test and the default rule (``only_default``: the
    default rule alone).

    Parameters
    ----------
    base, shift : dict
        The subject's baseline and shifted features.
    settings : EvalSettings
        What is evaluated.
    only_default : bool
        See above.
    """
    step_s = settings.step_ms / 1000.0
    off = 1e12  # a threshold no statistic reaches: that test is off
    configs = {"default": {}}  # the daemon's rule: both tests, persisted
    configs.update({f"ll{k:g}x{f:g}": dict(ll_spreads=k, ll_nats_per_feature=f, mmd_spreads=off,
                                           rule="or", persist_windows=1)
                    for k, f in LL_SWEEP})
    configs.update({f"mmd{k:g}": dict(ll_spreads=off, mmd_spreads=k, rule="or",
                                      persist_windows=1) for k in MMD_SWEEP})
    if only_default:
        configs = {"default": {}}
    acc = {c: {"fa": 0, "unshifted_s": 0.0, "delays": [], "miss": 0} for c in configs}
    cost = []
    for comp, ref, X, nb in detector_streams(base, shift, settings):
        for c, thr in configs.items():
            events, us = _run_watch(comp, ref, X, step_s, **thr)
            if c == "default":
                cost.append(us)
            r = acc[c]
            r["fa"] += sum(1 for i, _ in events if i < nb)
            r["unshifted_s"] += nb * step_s
            after = [i for i, _ in events if i >= nb]
            if after and (after[0] - nb) * step_s <= MAX_DELAY_S:
                r["delays"].append((after[0] - nb) * step_s)
            else:
                r["miss"] += 1
    out = {"watch_us_per_window": float(np.median(cost))}
    for c, r in acc.items():
        out[f"det_{c}_fa"] = r["fa"]
        out[f"det_{c}_unshifted_s"] = r["unshifted_s"]
        out[f"det_{c}_delays"] = r["delays"]
        out[f"det_{c}_miss"] = r["miss"]
    return out


def evaluate_unlabelled_dir(data_dir, settings=None, subjects=None, progress=None) -> dict:
    """All rows for every subject; returns ``{"subjects": {id: row}, "summary": {...}}``.

    Parameters
    ----------
    data_dir : str or Path
        Folder of the CIIL electrode-shift recordings.
    settings : EvalSettings, optional
        Default: the daemon's (``EvalSettings.from_config``).
    subjects : iterable of int, optional
        Subjects to run; default all found.
    progress : callable, optional
        Called as ``progress(subject, row)`` after each subject.
    """
    from .evaluate import EvalSettings, _load, require_subjects

    if settings is None:
        from .config import load_config

        settings = EvalSettings.from_config(load_config(None, env={}))
    pairs = require_subjects(data_dir, subjects)
    rows = {}
    for sid, b, s in pairs:
        base, shift = _load(b, settings), _load(s, settings)
        row = zero_label_subject(base, shift, settings)
        row.update(detection_subject(base, shift, settings))
        rows[sid] = row
        logger.info("subject %d: %s", sid, {k: v for k, v in row.items()
                                            if not isinstance(v, list)})
        if progress:
            progress(sid, row)
    return {"subjects": rows, "summary": summarize(rows)}


def summarize(rows: dict) -> dict:
    """Means of the accuracy rows and pooled detector rows.

    Parameters
    ----------
    rows : dict
        ``{subject: row}`` of :func:`zero_label_subject` and :func:`detection_subject`.
    """
    first = next(iter(rows.values()))
    summ = {}
    for k, v in first.items():
        if isinstance(v, (int, float)) and not k.startswith("det_"):
            summ[k] = float(np.mean([r[k] for r in rows.values() if k in r]))
    for k in first:
        if k.startswith("det_") and k.endswith("_fa"):
            c = k[4:-3]
            fa = sum(r[f"det_{c}_fa"] for r in rows.values())
            hours = sum(r[f"det_{c}_unshifted_s"] for r in rows.values()) / 3600.0
            delays = [d for r in rows.values() for d in r[f"det_{c}_delays"]]
            summ[f"det_{c}"] = {
                "fa_per_hour": fa / hours, "false_alarms": fa, "unshifted_hours": hours,
                "median_delay_s": float(np.median(delays)) if delays else float("nan"),
                "p90_delay_s": float(np.percentile(delays, 90)) if delays else float("nan"),
                "share_within_5s": float(np.mean(np.asarray(delays) <= 5.0) *
                                         len(delays) / (len(delays) + sum(
                                             r[f"det_{c}_miss"] for r in rows.values()))),
                "misses": sum(r[f"det_{c}_miss"] for r in rows.values())}
    return summ


def _f(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


ACC_COLS = ("within", "no_adapt", "zl_raw", "zl", "zl_ok", "zlrest_raw", "zlrest", "zlrest_ok",
            "ot_emd", "ot_sinkhorn", "ot_linear", "ot_emd_burst", "ot_sinkhorn_burst")


def to_markdown(result) -> str:
    """Accuracy table (per subject and mean) and the detector table.

    Parameters
    ----------
    result : dict
        An :func:`evaluate_unlabelled_dir` result.
    """
    s = result["summary"]
    cols = [c for c in ACC_COLS if c in s]
    lines = ["| subject | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for sid, row in sorted(result["subjects"].items()):
        lines.append(f"| {sid} | " + " | ".join(_f(row.get(c)) for c in cols) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{_f(s[c])}**" for c in cols) + " |")
    lines += ["", f"Balanced set: {s['zl_seconds']:.1f} s of windows on average; rest-dominated "
              f"set: {s['zlrest_seconds']:.1f} s, rest share {s['zlrest_rest_share']:.2f}. "
              f"Guarded fit time: {s['zl_ms']:.0f} ms (balanced), {s['zlrest_ms']:.0f} ms "
              f"(rest-dominated). ShiftWatch.update: {s['watch_us_per_window']:.0f} µs per "
              "window (median, MMD included).", "",
              "| detector | false alarms / h | false alarms | unshifted h | median delay s | "
              "p90 delay s | detected within 5 s | misses |", "|---" * 8 + "|"]
    for k, d in s.items():
        if k.startswith("det_"):
            lines.append(f"| {k[4:]} | {d['fa_per_hour']:.2f} | {d['false_alarms']} | "
                         f"{d['unshifted_hours']:.2f} | {_f(d['median_delay_s'])} | "
                         f"{_f(d['p90_delay_s'])} | {d['share_within_5s']:.2f} | "
                         f"{d['misses']} |")
    return "\n".join(lines)


def main(args) -> int:
    """CLI entry for ``emtl-stream evaluate DATA_DIR --unlabelled``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``emtl-stream evaluate`` arguments.
    """
    import sys

    from .config import load_config
    from .evaluate import EvalSettings, write_report

    subjects = {int(x) for x in args.subjects.split(",")} if args.subjects else None
    settings = EvalSettings.from_config(load_config(getattr(args, "config", None)))

    def progress(sid, row):
        print(f"subject {sid:2d}: within {row['within']:.3f}  zl {row['zl']:.3f}  "
              f"zlrest {row['zlrest']:.3f}  ot_emd {row.get('ot_emd', float('nan')):.3f}",
              file=sys.stderr, flush=True)

    result = evaluate_unlabelled_dir(args.data_dir, settings, subjects, progress)
    write_report(to_markdown(result), result, args)
    return 0
