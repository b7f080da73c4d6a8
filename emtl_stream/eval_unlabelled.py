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
  :data:`MAX_DELAY_S`), for the likelihood test alone, the MMD test alone, the ring
  test alone and the daemon's default (the ring test, or both other tests for 1 s);
  and one stream after a labelled calibration on shifted reps 0-1 (reps 2-7, where
  every event is a false alarm).
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
        res = fit_unlabelled(comp, X, eye, None, live_rotation=0.0,
                             transfer_kwargs=settings.transfer,
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
    """(components, H, b, reference, X stream, index of the first shifted window).

    Five streams per subject of baseline rep b (unshifted, held out) then the shifted
    recording, and one stream after a calibration: the map fitted with labels on
    shifted reps 0-1, then shifted reps 2-7 (unshifted relative to that map; index = its
    length, so every event is a false alarm). That stream has no reference (None): as
    in the daemon after a labelled swap, the watch learns it from the first
    :data:`~emtl_stream.daemon.shift.LIVE_REFERENCE_WINDOWS` windows after the map,
    not from the windows the map was fitted on.

    Parameters
    ----------
    base, shift : dict
        The subject's baseline and shifted features.
    settings : EvalSettings
        What is evaluated.
    """
    from .daemon.shift import ShiftReference
    from .model.transfer import TransferEM

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
        yield comp, np.eye(m), np.zeros(m), ref, np.vstack([Xb, shift["X"][:n_shift]]), len(Xb)
    train = np.isin(base["rep"], (0, 1, 2))
    comp = _source(base["X"][train], base["y"][train], settings).to_components()
    cal = np.isin(shift["rep"], CAL_REPS)
    tem = TransferEM(comp, ring_channels=settings.ring_channels, **settings.transfer)
    tem.fit(shift["X"][cal], shift["y"][cal])
    Xp = shift["X"][~cal]
    yield comp, tem.H_, tem.b_, None, Xp, len(Xp)


def run_watch(comp, H, b, ref, X, step_s, ring_channels=None, **thresholds):
    """Feed X in order to a ShiftWatch; its events ``[(index, event)]`` and µs per window.

    Parameters
    ----------
    comp : Components
        The source mixture.
    H : ndarray of shape (n_features, n_features)
    b : ndarray of shape (n_features,)
        The live map.
    ref : ShiftReference or None
        The detector's reference.
    X : ndarray of shape (n_windows, n_features)
        The window stream, in order.
    step_s : float
        Seconds between windows.
    ring_channels : int, optional
        Switches the ring test on.
    **thresholds
        Further ShiftWatch settings.
    """
    from .daemon.shift import ShiftWatch
    from .model.classify import MappedClassifier

    m = comp.n_features
    clf = MappedClassifier(comp, H, b)
    ll = clf.log_marginal(X)
    Z = X @ clf.H.T + clf.b
    mmd_on = thresholds.get("mmd_spreads", 0.0) < 1e11  # skip the MMD cost when it is off
    watch = ShiftWatch(m, ref, components=comp if (mmd_on or ring_channels) else None,
                       ring_channels=ring_channels, **thresholds)
    if not mmd_on and ring_channels:
        watch._mmd = None
    t0 = time.perf_counter()
    events = [(i, e) for i in range(len(X))
              if (e := watch.update(ll[i], Z[i], i * step_s, x=X[i], H=clf.H, b=clf.b))]
    per_window_us = 1e6 * (time.perf_counter() - t0) / len(X)
    return events, per_window_us


def detector_configs(ring_channels):
    """Name the detector variants compared and their ShiftWatch settings.

    The default, the ring test alone, the likelihood+MMD rule, the single-test sweeps.

    Parameters
    ----------
    ring_channels : int or None
        Electrodes on the ring (None: no ring test).
    """
    off = 1e12  # a threshold no statistic reaches: that test is off
    configs = {"default": dict(ring_channels=ring_channels),
               "ring": dict(ring_channels=ring_channels, ll_spreads=off, mmd_spreads=off,
                            ring_ll_spreads=0.0),
               "ll+mmd": {}}
    configs.update({f"ll{k:g}x{f:g}": dict(ll_spreads=k, ll_nats_per_feature=f, mmd_spreads=off,
                                           rule="or", persist_windows=1)
                    for k, f in LL_SWEEP})
    configs.update({f"mmd{k:g}": dict(ll_spreads=off, mmd_spreads=k, rule="or",
                                      persist_windows=1) for k in MMD_SWEEP})
    return configs


def detection_subject(base: dict, shift: dict, settings, only_default: bool = False,
                      variants=None) -> dict:
    """Measure delays and false alarms of the detector variants on one subject.

    Parameters
    ----------
    base, shift : dict
        The subject's baseline and shifted features.
    settings : EvalSettings
        What is evaluated.
    only_default : bool
        The default rule alone.
    variants : sequence of str, optional
        These names of :func:`detector_configs` only.
    """
    step_s = settings.step_ms / 1000.0
    configs = detector_configs(settings.ring_channels)
    if only_default:
        configs = {"default": configs["default"]}
    elif variants is not None:
        configs = {k: configs[k] for k in variants}
    acc = {c: {"fa": 0, "unshifted_s": 0.0, "fa_after_cal": 0, "after_cal_s": 0.0,
               "delays": [], "miss": 0} for c in configs}
    cost = []
    for comp, H, b, ref, X, nb in detector_streams(base, shift, settings):
        post = nb == len(X)
        for c, thr in configs.items():
            if post and not thr.get("ring_channels") and c != "ll+mmd":
                continue  # the single-test sweeps: baseline streams only
            events, us = run_watch(comp, H, b, ref, X, step_s, **thr)
            if c == "default":
                cost.append(us)
            r = acc[c]
            if post:
                r["fa_after_cal"] += len(events)
                r["after_cal_s"] += nb * step_s
                continue
            r["fa"] += sum(1 for i, _ in events if i < nb)
            r["unshifted_s"] += nb * step_s
            after = [i for i, _ in events if i >= nb]
            if after and (after[0] - nb) * step_s <= MAX_DELAY_S:
                r["delays"].append((after[0] - nb) * step_s)
            else:
                r["miss"] += 1
    out = {"watch_us_per_window": float(np.median(cost))}
    for c, r in acc.items():
        for k, v in r.items():
            out[f"det_{c}_{k}"] = v
    return out


def synthetic_false_alarms(hours: float, seeds: int = 8, progress=None) -> dict:
    """Count false alarms of the default detector on long unshifted synthetic streams.

    Per seed a source model is trained on 2 repetitions (3 s per class), its reference
    taken from a third, and ``hours / seeds`` hours of repetitions (6 s per class, a new
    noise draw every repetition) are streamed. Also the delay after a shift of 1 and
    0.5 electrode spacings appended to each stream.

    Parameters
    ----------
    hours : float
        Total unshifted stream length.
    seeds : int
        Armbands (each its own muscle layout).
    progress : callable, optional
        Called as ``progress(seed, false_alarms, hours)`` after each seed.

    Returns
    -------
    dict
        ``false_alarms``, ``hours``, ``delays_s`` (per seed and shift; None = miss).
    """
    from .daemon.bundle import fit_source_model
    from .daemon.shift import ShiftReference
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import featurize
    from .sim.synthetic import SyntheticArmband

    fs, C, step_ms = 500.0, 8, 50.0
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=C, fs=fs)

    def stream(arm, s_per_class, reps):
        emg = np.vstack([arm.generate(int(s_per_class * fs), c)
                         for _ in range(reps) for c in arm.class_names])
        labels = np.concatenate([[c] * int(s_per_class * fs)
                                 for _ in range(reps) for c in arm.class_names])
        X, _, off = featurize(emg, fs, ext, 200.0, step_ms)
        return X, labels[off + int(0.2 * fs) - 1]

    fa, n_windows, delays = 0, 0, []
    per_rep_s = 6.0 * 5
    reps = max(1, int(round(hours * 3600.0 / seeds / per_rep_s)))
    for seed in range(seeds):
        arm = SyntheticArmband(n_channels=C, fs=fs, seed=1000 + seed)
        X, y = stream(arm, 3.0, 2)
        comp = fit_source_model(X, y, kind="lgmm", covariance_type="tied").to_components()
        m = comp.n_features
        ref = ShiftReference.from_windows(comp, np.eye(m), np.zeros(m), stream(arm, 3.0, 1)[0])
        Xu, _ = stream(arm, 6.0, reps)
        ev, _ = run_watch(comp, np.eye(m), np.zeros(m), ref, Xu, step_ms / 1e3, ring_channels=C)
        fa += len(ev)
        n_windows += len(Xu)
        for sh in (1.0, 0.5):
            arm.set_shift(sh)
            Xs, _ = stream(arm, 3.0, 4)
            arm.set_shift(0.0)
            nb = 200
            ev, _ = run_watch(comp, np.eye(m), np.zeros(m), ref, np.vstack([Xu[-nb:], Xs]),
                              step_ms / 1e3, ring_channels=C)
            after = [i for i, _ in ev if i >= nb]
            delays.append({"seed": seed, "shift": sh,
                           "delay_s": (after[0] - nb) * step_ms / 1e3 if after else None})
        if progress:
            progress(seed, fa, n_windows * step_ms / 3.6e6)
    return {"false_alarms": fa, "hours": n_windows * step_ms / 3.6e6, "delays": delays}


def poisson_upper(k: int, hours: float, conf: float = 0.95) -> float:
    """Bound a Poisson rate from above (one-sided) from k events in ``hours``.

    Parameters
    ----------
    k : int
        Events seen.
    hours : float
        Observation time.
    conf : float
        Confidence of the bound.
    """
    from scipy.stats import chi2

    return float(chi2.ppf(conf, 2 * (k + 1)) / 2.0 / hours)


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
            fa_cal = sum(r.get(f"det_{c}_fa_after_cal", 0) for r in rows.values())
            h_cal = sum(r.get(f"det_{c}_after_cal_s", 0.0) for r in rows.values()) / 3600.0
            delays = [d for r in rows.values() for d in r[f"det_{c}_delays"]]
            summ[f"det_{c}"] = {
                "fa_per_hour": fa / hours, "false_alarms": fa, "unshifted_hours": hours,
                "median_delay_s": float(np.median(delays)) if delays else float("nan"),
                "p90_delay_s": float(np.percentile(delays, 90)) if delays else float("nan"),
                "share_within_5s": float(np.mean(np.asarray(delays) <= 5.0) *
                                         len(delays) / (len(delays) + sum(
                                             r[f"det_{c}_miss"] for r in rows.values()))),
                "misses": sum(r[f"det_{c}_miss"] for r in rows.values()),
                "false_alarms_after_cal": fa_cal if h_cal else None,
                "after_cal_hours": h_cal,
                "fa_per_hour_all": (fa + fa_cal) / (hours + h_cal),
                "fa_upper95_all": poisson_upper(fa + fa_cal, hours + h_cal)}
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
              "| detector | false alarms (held-out reps) | h | false alarms (after a "
              "calibration) | h | per h, all | 95 % upper bound per h | median delay s | "
              "p90 delay s | detected within 5 s | misses |", "|---" * 11 + "|"]
    for k, d in s.items():
        if k.startswith("det_"):
            cal = "–" if d["false_alarms_after_cal"] is None else d["false_alarms_after_cal"]
            lines.append(f"| {k[4:]} | {d['false_alarms']} | {d['unshifted_hours']:.2f} | "
                         f"{cal} | {d['after_cal_hours']:.2f} | {d['fa_per_hour_all']:.2f} | "
                         f"{d['fa_upper95_all']:.1f} | {_f(d['median_delay_s'])} | "
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
