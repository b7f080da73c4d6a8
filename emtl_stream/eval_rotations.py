"""``emtl-stream evaluate DATA_DIR --rotations``: transfer at any armband angle and gain.

The CIIL electrode-shift recordings (Campbell et al., J. NeuroEng. Rehabil. 21:70, 2024)
rotate the armband by exactly one electrode. To test fractional rotations and amplitude
changes, the *baseline* recording is rotated virtually: every raw channel is mixed with
its ring neighbour,

    x'_c = g ((1 - f) x_{c-k} + f x_{c-k-1})      for a rotation of k + f spacings,

and the features are computed from x'. Protocol per subject and grid point:

* source model: the daemon's default, trained on the unrotated baseline reps 0-2;
* ``within``: the source model on the unrotated baseline rep 4 (the same windows as
  the test set, before rotation);
* the new session is the rotated baseline reps 3-4; test = rotated rep 4;
* ``no_adapt``: the source model on the rotated test set;
* ``transfer``: :class:`TransferEM` with the daemon's settings, calibrated on the first
  ``burst_s`` seconds of every class of rotated rep 3 (a window counts when it ends
  within ``burst_s`` of its segment's start; after the settings' ``lead_in_s``, the
  daemon's recording rule, when that is set: :func:`~emtl_stream.evaluate.burst_rows`);
* ``zero_label``: the same TransferEM fitted on all of rotated rep 3 without labels;
  ``zero_label_guarded``: what the daemon keeps from that zero-label fit
  (:func:`emtl_stream.daemon.adapt.fit_unlabelled`: the fitted map when its guard
  accepts, the live identity map otherwise);
* ``slda``: shrinkage-LDA retrained on the burst;
* ``ref``: the reference package (em-transfer-learning, GPLv3, imported only, never
  copied) on the burst, when it is installed.

A second table runs the same rows on :class:`~emtl_stream.sim.synthetic.SyntheticArmband`
with fractional shifts and an electrode gain.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .logs import logger

#: 0 to 1 spacing in quarter steps, plus 1.5 and 2.5: the virtual rotation is circulant,
#: so for a method that searches all rolls k + f behaves as f (the table shows it).
ROTATIONS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5)
GAINS = (0.7, 1.0, 1.4)
TRAIN_REPS, CAL_REP, TEST_REP = (0, 1, 2), 3, 4
BURST_S = 0.5
METHODS = ("no_adapt", "transfer", "zero_label", "zero_label_guarded", "transfer_cont",
           "zero_label_cont", "zero_label_cont_guarded", "slda",
           "ref")
#: TransferEM overrides of the ``*_cont`` rows (the opt-in continuous rotation search).
CONTINUOUS = {"rotation_search": "continuous"}


def rotate_ring(emg, rotation: float, gain: float = 1.0) -> np.ndarray:
    """Virtual armband rotation of raw EMG by ``rotation`` electrode spacings, times ``gain``.

    Parameters
    ----------
    emg : array-like of shape (n_samples, n_channels)
    rotation : float
        k + f spacings; channel c of the result is ``g((1-f) x[c-k] + f x[c-k-1])``.
    gain : float

    Returns
    -------
    ndarray of shape (n_samples, n_channels), float64
    """
    x = np.asarray(emg, dtype=np.float64)
    k = int(np.floor(rotation))
    f = float(rotation) - k
    return gain * ((1.0 - f) * np.roll(x, k, axis=1) + f * np.roll(x, k + 1, axis=1))


def reference_available() -> bool:
    """Whether the reference package can be imported."""
    try:
        import em_transfer_learning.transfer_learning  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class RotationGrid:
    """What the rotation benchmark runs."""

    rotations: tuple = ROTATIONS
    gains: tuple = GAINS
    burst_s: float = BURST_S
    reference: bool = True
    settings: object = None  # evaluate.EvalSettings (daemon defaults when None)
    extra: dict = field(default_factory=dict)  # TransferEM keyword overrides (experiments)


def _subject_features(path: Path, settings, rotations, gains):
    from .io.recordings import load_ciil_session
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import ciil_features

    ex = FeatureExtractor(settings.feature_names, n_channels=8, fs=200.0)
    session = load_ciil_session(path)
    feats, meta = {}, None
    for key in [(0.0, 1.0)] + [(float(r), float(g)) for r in rotations for g in gains]:
        if key not in feats:
            d = ciil_features(dict(session, emg=rotate_ring(session["emg"], *key)), ex,
                              settings.window_ms, settings.step_ms)
            feats[key] = d["X"]
            meta = meta or {k: d[k] for k in ("y", "rep", "offset_s")}
    return feats, meta


def evaluate_subject_rotations(baseline: Path, grid: RotationGrid) -> dict:
    """All grid points of one subject.

    Parameters
    ----------
    baseline : Path
        The subject's baseline recording (the shifted one is not used).
    grid : RotationGrid
        What to run.

    Returns
    -------
    dict
        ``{(rotation, gain): {method: accuracy, "fit_ms": ...}}`` plus ``"within"``.
    """
    from .daemon.adapt import fit_unlabelled
    from .eval_unlabelled import _acc
    from .evaluate import _accuracy, _reference_transfer, burst_rows
    from .model.baselines import ShrinkageLDA
    from .model.gmm import LabelledGMM
    from .model.rotation import count_types
    from .model.transfer import TransferEM

    s = grid.settings
    feats, meta = _subject_features(baseline, s, grid.rotations, grid.gains)
    y, rep = meta["y"], meta["rep"]
    train, cal, test = np.isin(rep, TRAIN_REPS), rep == CAL_REP, rep == TEST_REP
    burst = cal & burst_rows(meta["offset_s"], grid.burst_s, s.window_ms / 1e3, s.lead_in_s)
    source = LabelledGMM(n_components_per_class=s.n_components_per_class,
                         covariance_type=s.covariance_type, random_state=0)
    source.fit(feats[(0.0, 1.0)][train], y[train])
    out = {"within": _accuracy(source.predict(feats[(0.0, 1.0)][test]), y[test])}
    kw = dict(s.transfer, **grid.extra)
    classes = np.unique(y)
    comp = source.to_components()
    eye = np.eye(comp.n_features)

    def guarded(X, kwargs, Xt, yt):  # the daemon's zero-label path: fit, its guard decides
        res = fit_unlabelled(comp, X, eye, None, live_rotation=0.0, transfer_kwargs=kwargs,
                             ring_channels=s.ring_channels)
        return _acc(comp, res.H, res.b, Xt, yt)

    for rot in grid.rotations:
        for g in grid.gains:
            X = feats[(float(rot), float(g))]
            Xt, yt = X[test], y[test]
            row = {"no_adapt": _accuracy(source.predict(Xt), yt)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                tem = TransferEM(source, ring_channels=s.ring_channels, **kw)
                tem.fit(X[burst], y[burst])
                row["fit_ms"] = 1e3 * (time.perf_counter() - t0)
                row["transfer"] = _accuracy(tem.predict(Xt), yt)
                tz = TransferEM(source, ring_channels=s.ring_channels, **kw).fit(X[cal], None)
                row["zero_label"] = _accuracy(tz.predict(Xt), yt)
                row["zero_label_guarded"] = guarded(X[cal], kw, Xt, yt)
                kc = dict(kw, **CONTINUOUS, rotation_counts=count_types(s.feature_names))
                tc = TransferEM(source, ring_channels=s.ring_channels, **kc)
                tc.fit(X[burst], y[burst])
                row["transfer_cont"] = _accuracy(tc.predict(Xt), yt)
                tc = TransferEM(source, ring_channels=s.ring_channels, **kc).fit(X[cal], None)
                row["zero_label_cont"] = _accuracy(tc.predict(Xt), yt)
                row["zero_label_cont_guarded"] = guarded(X[cal], kc, Xt, yt)
            row["slda"] = _accuracy(ShrinkageLDA().fit(X[burst], y[burst]).predict(Xt), yt)
            if grid.reference:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    H = _reference_transfer(source, X[burst], np.searchsorted(classes, y[burst]))
                row["ref"] = (_accuracy(source.predict(Xt @ H.T), yt)
                              if np.all(np.isfinite(H)) else float("nan"))
            out[(float(rot), float(g))] = row
    return out


def _summarise(rows: list[dict], grid: RotationGrid, methods) -> dict:
    """Mean accuracy and mean ratio to within-session per grid point and method."""
    summary = {"within": float(np.mean([r["within"] for r in rows]))}
    for rot in grid.rotations:
        for g in grid.gains:
            key = (float(rot), float(g))
            cell = {}
            for m in (*methods, "fit_ms"):
                vals = [r[key][m] for r in rows if m in r[key]]
                if m == "ref":  # the reference's non-finite H (its E-step underflow)
                    cell["ref_failed"] = int(np.sum(np.isnan(vals)))
                if not vals or np.all(np.isnan(vals)):  # e.g. the reference failed everywhere
                    cell[m] = cell[m + "/within"] = float("nan")
                    continue
                cell[m] = float(np.nanmean(vals))
                if m != "fit_ms":
                    cell[m + "/within"] = float(np.nanmean(
                        [r[key][m] / r["within"] for r in rows if m in r[key]]))
            summary[key] = cell
    return summary


def evaluate_rotations(data_dir, grid: RotationGrid | None = None, subjects=None,
                       progress=None) -> dict:
    """Return the real-EMG rotation grid over every subject in ``data_dir``.

    Parameters
    ----------
    data_dir : str or Path
        Folder of the CIIL electrode-shift recordings.
    grid : RotationGrid, optional
        What to run; default: the daemon's settings on the default grid.
    subjects : iterable of int, optional
        Subjects to run; default all found.
    progress : callable, optional
        Called as ``progress(subject, row)`` after each subject.

    Returns
    -------
    dict
        ``{"subjects": {id: per-subject dict}, "mean": summary, "grid": ...}``; the
        summary holds, per (rotation, gain), every method's mean accuracy and mean
        ratio to within-session (``"<method>/within"``).
    """
    from .evaluate import require_subjects

    grid = grid or RotationGrid()
    if grid.settings is None:
        from .config import load_config
        from .evaluate import EvalSettings

        grid.settings = EvalSettings.from_config(load_config(None, env={}))
    if grid.reference and not reference_available():
        print("note: em-transfer-learning is not installed; the reference row is skipped",
              file=sys.stderr)
        grid.reference = False
    pairs = require_subjects(data_dir, subjects)
    rows = {}
    for sid, b, _ in pairs:
        rows[sid] = evaluate_subject_rotations(b, grid)
        logger.info("subject %d done", sid)
        if progress:
            progress(sid, rows[sid])
    methods = [m for m in METHODS if m != "ref" or grid.reference]
    return {"subjects": rows, "mean": _summarise(list(rows.values()), grid, methods),
            "methods": methods, "grid": {"rotations": list(map(float, grid.rotations)),
                                         "gains": list(map(float, grid.gains)),
                                         "burst_s": grid.burst_s,
                                         "lead_in_s": grid.settings.lead_in_s}}


# ------------------------------------------------------------------ synthetic armband
@dataclass
class SyntheticProtocol:
    """The same rows on the synthetic armband (fs 1 kHz, Hudgins features)."""

    shifts: tuple = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
    gains: tuple = GAINS
    noise_level: float = 1.5
    seeds: tuple = (0, 1, 2, 3)
    fs: float = 1000.0
    train_s: float = 10.0
    burst_s: float = BURST_S
    unlabelled_s: float = 3.0
    test_s: float = 5.0
    window_ms: float = 200.0
    step_ms: float = 50.0
    reference: bool = False
    transfer: dict = field(default_factory=lambda: dict(structure="channel", reg=0.1))


def synthetic_session(arm, seconds: float, extractor, window_ms, step_ms):
    """Features and labels of ``seconds`` per class (classes in order) from ``arm``.

    Parameters
    ----------
    arm : SyntheticArmband
        The armband.
    seconds : float
        Signal per class.
    extractor : FeatureExtractor
        The features.
    window_ms, step_ms : float
        Window length and hop.

    Returns
    -------
    X : ndarray of shape (N, n_features)
    y : ndarray of shape (N,) int
    t : ndarray of shape (N,)
        End of each window since the start of its class segment (s).
    """
    from .pipeline.offline import featurize
    from .pipeline.windowing import ms_to_samples

    n = int(round(seconds * arm.fs))
    n_cls = len(arm.class_names)
    # A lead-in per class, discarded, so every segment starts from a settled level.
    lead = int(round(0.3 * arm.fs))
    segs = []
    for c in range(n_cls):
        arm.generate(lead, c)
        segs.append(arm.generate(n, c))
    emg = np.concatenate(segs)
    X, si, off = featurize(emg, arm.fs, extractor, window_ms, step_ms,
                           np.arange(n_cls) * n, np.full(n_cls, n))
    window = ms_to_samples(window_ms, arm.fs, "window_ms")
    return X, si.astype(np.int64), (off + window) / arm.fs


def evaluate_synthetic(proto: SyntheticProtocol | None = None) -> dict:
    """Mean accuracies (over seeds) per (shift, gain) on the synthetic armband.

    Parameters
    ----------
    proto : SyntheticProtocol, optional
        What to run; default :class:`SyntheticProtocol`'s defaults.
    """
    from .evaluate import _accuracy
    from .model.baselines import ShrinkageLDA
    from .model.gmm import LabelledGMM
    from .model.rotation import count_types
    from .model.transfer import TransferEM
    from .pipeline.features import FeatureExtractor
    from .sim.synthetic import SyntheticArmband

    p = proto or SyntheticProtocol()
    ex = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=8, fs=p.fs)
    per = {}
    within = []
    for seed in p.seeds:
        arm = SyntheticArmband(8, p.fs, seed=seed, noise_level=p.noise_level)
        Xs, ys, _ = synthetic_session(arm, p.train_s, ex, p.window_ms, p.step_ms)
        source = LabelledGMM(covariance_type="tied", random_state=0).fit(Xs, ys)
        Xw, yw, _ = synthetic_session(arm, p.test_s, ex, p.window_ms, p.step_ms)
        within.append(_accuracy(source.predict(Xw), yw))
        for sh in p.shifts:
            for g in p.gains:
                arm.set_shift(sh)
                arm.set_gain(g)
                Xb, yb, tb = synthetic_session(arm, p.burst_s, ex, p.window_ms, p.step_ms)
                Xu, _, _ = synthetic_session(arm, p.unlabelled_s, ex, p.window_ms, p.step_ms)
                Xt, yt, _ = synthetic_session(arm, p.test_s, ex, p.window_ms, p.step_ms)
                arm.set_shift(0.0)
                arm.set_gain(1.0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tem = TransferEM(source, ring_channels=8, **p.transfer).fit(Xb, yb)
                    tz = TransferEM(source, ring_channels=8, **p.transfer).fit(Xu, None)
                    kc = dict(p.transfer, **CONTINUOUS,
                              rotation_counts=count_types(("mav", "wl", "zc", "ssc")))
                    tc = TransferEM(source, ring_channels=8, **kc).fit(Xb, yb)
                    tcz = TransferEM(source, ring_channels=8, **kc).fit(Xu, None)
                row = {"transfer_cont": _accuracy(tc.predict(Xt), yt),
                       "zero_label_cont": _accuracy(tcz.predict(Xt), yt),
                       "no_adapt": _accuracy(source.predict(Xt), yt),
                       "transfer": _accuracy(tem.predict(Xt), yt),
                       "zero_label": _accuracy(tz.predict(Xt), yt),
                       "slda": _accuracy(ShrinkageLDA().fit(Xb, yb).predict(Xt), yt)}
                per.setdefault((float(sh), float(g)), []).append((row, within[-1]))
    mean = {"within": float(np.mean(within))}
    for key, lst in per.items():
        mean[key] = {m: float(np.mean([r[m] for r, _ in lst])) for m in lst[0][0]}
        mean[key].update({m + "/within": float(np.mean([r[m] / w for r, w in lst]))
                          for m in lst[0][0]})
    return {"mean": mean, "methods": ["no_adapt", "transfer", "zero_label", "transfer_cont",
                                      "zero_label_cont", "slda"],
            "protocol": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in p.__dict__.items()}}


# ------------------------------------------------------------------ output
_LABELS = {"no_adapt": "no adaptation", "transfer": "transfer EM ({b:g} s burst)",
           "zero_label": "zero-label", "transfer_cont": "continuous search ({b:g} s burst)",
           "zero_label_cont": "continuous search, zero-label", "slda": "shrinkage-LDA ({b:g} s)",
           "zero_label_guarded": "zero-label, guarded",
           "zero_label_cont_guarded": "continuous search, zero-label, guarded",
           "ref": "reference ({b:g} s)"}


def to_markdown(summary: dict, methods, burst_s: float = BURST_S, ratio: bool = True) -> str:
    """One row per (rotation, gain), one column per method: accuracy (ratio to within).

    Parameters
    ----------
    summary : dict
        A ``"mean"`` summary of :func:`evaluate_rotations` (or the synthetic one).
    methods : sequence of str
        Columns, in order.
    burst_s : float
        Burst length, shown in the column headers.
    ratio : bool
        Also show each accuracy's ratio to within-session.
    """
    head = [_LABELS[m].format(b=burst_s) for m in methods]
    lines = [f"Within-session {summary['within']:.3f}; cells: mean accuracy "
             "(mean ratio to within-session).", "",
             "| rotation (spacings) | gain | " + " | ".join(head) + " |",
             "|---" * (len(head) + 2) + "|"]
    keys = sorted(k for k in summary if isinstance(k, tuple))
    for key in keys:
        cell = summary[key]
        vals = []
        for m in methods:
            v = cell.get(m, float("nan"))
            r = cell.get(m + "/within", float("nan"))
            vals.append("–" if not np.isfinite(v) else
                        (f"{v:.3f} ({100 * r:.0f} %)" if ratio else f"{v:.3f}"))
        lines.append(f"| {key[0]:g} | {key[1]:g} | " + " | ".join(vals) + " |")
    worst = {m: min(summary[k].get(m + "/within", np.nan) for k in keys) for m in methods}
    lines.append("| **worst cell** | | " + " | ".join(
        "–" if not np.isfinite(worst[m]) else f"**{100 * worst[m]:.0f} %**" for m in methods)
        + " |")
    failed = sum(summary[k].get("ref_failed", 0) for k in keys)
    if "ref" in methods:
        lines.append("")
        lines.append(f"The reference returned a non-finite H in {failed} subject-cells, left "
                     "out of its means.")
    return "\n".join(lines)


def _jsonable(result):
    def conv(d):
        if isinstance(d, dict):
            return {(f"{k[0]:g}@{k[1]:g}" if isinstance(k, tuple) else str(k)): conv(v)
                    for k, v in d.items()}
        return d
    return conv(result)


def main_rotations(args) -> int:
    """CLI entry: ``emtl-stream evaluate DATA_DIR --rotations [--synthetic] [--json F]``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``emtl-stream evaluate`` arguments.
    """
    from .evaluate import burst_description, settings_from_args, write_report

    subjects = {int(s) for s in args.subjects.split(",")} if args.subjects else None
    settings = settings_from_args(args)
    grid = RotationGrid(settings=settings, reference=True)

    def progress(sid, row):
        print(f"subject {sid:2d} done", file=sys.stderr, flush=True)

    result = evaluate_rotations(args.data_dir, grid, subjects, progress)
    burst = burst_description(f"{grid.burst_s:g} s", settings.lead_in_s)
    text = (f"## Real EMG, virtual rotation\n\nBurst: {burst} of rotated rep 3.\n\n"
            + to_markdown(result["mean"], result["methods"]))
    syn = evaluate_synthetic()
    text += "\n\n## Synthetic armband\n\n" + to_markdown(syn["mean"], syn["methods"])
    write_report(text, _jsonable({"real": result, "synthetic": syn}), args)
    return 0


def time_fits(ns=(25, 40, 200), repeats=15, seed=0) -> str:
    """Median fit times of the roll and the continuous search side by side (Markdown).

    Problem: the daemon's shape (8 channels x 4 feature types, 5 classes, tied LDA
    source), target = the source rotated by 1.5 spacings at gain 0.7 on the first two
    feature types; labelled and unlabelled bursts of N windows. One untimed warm-up per
    cell, then ``repeats`` alternating runs of both modes.

    Parameters
    ----------
    ns : sequence of int
        Burst sizes N (windows).
    repeats : int
        Timed runs per mode and cell.
    seed : int
        Seed of the problem.
    """
    from .model.source import SourceComponents
    from .model.transfer import TransferEM, ring_rotation_matrix

    rng = np.random.default_rng(seed)
    C, f, L = 8, 4, 5
    n = C * f
    A = rng.normal(size=(n, n))
    P = np.linalg.cholesky(np.linalg.inv(A @ A.T / n + np.eye(n)))
    means = rng.normal(size=(L, n)) * 2.0
    src = SourceComponents(means, np.repeat(P[None], L, 0),
                           np.full(L, 2 * np.log(np.diag(P)).sum()), np.full(L, -np.log(L)),
                           np.where(np.eye(L) > 0, 0.0, -np.inf), np.arange(L), True)
    cov = np.linalg.inv(P @ P.T)
    gain = np.where(np.arange(n) % f < 2, 0.7, 1.0)
    lines = ["| N | labels | roll (8 starts) | continuous (search + refine + guard) | ratio |",
             "|---|---|---|---|---|"]
    for N in ns:
        comp = np.arange(N) % L
        Z = means[comp] + rng.multivariate_normal(np.zeros(n), cov, N)
        X = gain * (Z @ ring_rotation_matrix(n, C, 1.5).T)
        for lab in (comp, None):
            t = {"roll": [], "continuous": []}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for mode in t:
                    TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                               rotation_search=mode).fit(X, lab)
                for _ in range(repeats):
                    for mode in t:
                        t0 = time.perf_counter()
                        TransferEM(src, ring_channels=C, structure="channel", reg=0.1,
                                   rotation_search=mode).fit(X, lab)
                        t[mode].append(time.perf_counter() - t0)
            a, b = (1e3 * float(np.median(t[k])) for k in ("roll", "continuous"))
            lines.append(f"| {N} | {'yes' if lab is not None else 'none'} | {a:.1f} ms | "
                         f"{b:.1f} ms | {b / a:.1f}x |")
    return "\n".join(lines)


# ------------------------------------------------------------------ where the loss is
#: Cells of the loss breakdown: the continuous search's weak cells and one integer shift.
BREAKDOWN_CELLS = ((0.5, 1.0), (0.75, 1.0), (0.75, 1.4), (0.0, 1.4), (1.0, 1.0))

#: Rows of the loss breakdown, from what the method does to what no user has.
BREAKDOWN_ROWS = ("no_adapt", "search", "true_start", "true_refined", "true_oracle_gain",
                  "mixed_oracle_gain", "oracle_map")

#: Count features: the count of a mixed signal is close to the mix of the counts, so their
#: inverse is the plain back-interpolation R(θ)ᵀ rather than the sharpening S(θ).
COUNT_FEATURES = ("zc", "ssc")


def paired_channel_map(X_new, X_old, n_channels: int) -> np.ndarray:
    """Least-squares channel-structured map from paired windows (an oracle, no offset).

    Row i of H regresses ``X_old[:, i]`` on the columns of ``X_new`` of the same feature
    type (the free entries of :func:`~emtl_stream.model.transfer.channel_mask`).

    Parameters
    ----------
    X_new : ndarray of shape (N, n)
        Windows after the rotation.
    X_old : ndarray of shape (N, n)
        The same windows before it.
    n_channels : int

    Returns
    -------
    ndarray of shape (n, n)
    """
    from .model.transfer import channel_mask

    n = X_new.shape[1]
    mask = channel_mask(n, n_channels)
    H = np.zeros((n, n))
    for i in range(n):
        idx = np.flatnonzero(mask[i])
        H[i, idx] = np.linalg.lstsq(X_new[:, idx], X_old[:, i], rcond=None)[0]
    return H


def paired_type_gains(S, X_new, X_old, n_types: int) -> np.ndarray:
    """``diag(g) S`` with one least-squares gain per feature type on paired windows.

    Parameters
    ----------
    S : ndarray of shape (n, n)
    X_new, X_old : ndarray of shape (N, n)
        Paired windows after and before the rotation.
    n_types : int
        Feature types per channel (channel-major features: type = column % n_types).

    Returns
    -------
    ndarray of shape (n, n)
    """
    U = X_new @ S.T
    t = np.arange(S.shape[0]) % n_types
    g = np.array([np.sum(U[:, t == k] * X_old[:, t == k]) / np.sum(U[:, t == k] ** 2)
                  for k in range(n_types)])
    return g[t][:, None] * S


def breakdown_subject(baseline: Path, settings, cells=BREAKDOWN_CELLS,
                      burst_s: float = BURST_S) -> dict:
    """Where a labelled burst loses at each cell: ratios to within-session of one subject.

    Rows (:data:`BREAKDOWN_ROWS`): ``search`` the continuous search as the daemon runs it;
    ``true_start`` its candidate at the true rotation (search gains), not refined;
    ``true_refined`` that candidate refined by EM and shrunk towards it (what a perfect
    rotation choice would give); ``true_oracle_gain`` ``S(θ)`` at the true rotation with
    per-type gains fitted on paired rep-3 windows, not refined; ``oracle_map`` the
    channel-structured map fitted on those paired windows (:func:`paired_channel_map`);
    ``mixed_oracle_gain`` as ``true_oracle_gain`` with ``R(θ)ᵀ`` in place of ``S(θ)`` on
    the rows of :data:`COUNT_FEATURES`.

    Parameters
    ----------
    baseline : Path
        The subject's baseline recording (npz of the shared format).
    settings : EvalSettings
        Features, source model and TransferEM settings (the daemon's).
    cells : sequence of (rotation, gain)
    burst_s : float
        Seconds per class of the labelled burst.

    Returns
    -------
    dict
        ``{(rotation, gain): {row: accuracy / within}}``.
    """
    from .evaluate import _accuracy, burst_rows
    from .model.gmm import LabelledGMM
    from .model.transfer import TransferEM, channel_mask

    s = settings
    rots = sorted({c[0] for c in cells})
    gains = sorted({c[1] for c in cells})
    feats, meta = _subject_features(baseline, s, rots, gains)
    y, rep = meta["y"], meta["rep"]
    train, cal, test = np.isin(rep, TRAIN_REPS), rep == CAL_REP, rep == TEST_REP
    burst = cal & burst_rows(meta["offset_s"], burst_s, s.window_ms / 1e3, s.lead_in_s)
    X0 = feats[(0.0, 1.0)]
    source = LabelledGMM(n_components_per_class=s.n_components_per_class,
                         covariance_type=s.covariance_type, random_state=0)
    source.fit(X0[train], y[train])
    within = _accuracy(source.predict(X0[test]), y[test])
    C = s.ring_channels
    n = X0.shape[1]
    mask = channel_mask(n, C)
    kw = dict(s.transfer, **CONTINUOUS)
    out = {}
    for cell in cells:
        X = feats[(float(cell[0]), float(cell[1]))]
        Xt, yt = X[test], y[test]

        def ratio(H, X=X, Xt=Xt, yt=yt):
            return _accuracy(source.predict(Xt @ H.T), yt) / within

        row = {"no_adapt": _accuracy(source.predict(Xt), yt) / within}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tem = TransferEM(source, ring_channels=C, **kw).fit(X[burst], y[burst])
            row["search"] = _accuracy(tem.predict(Xt), yt) / within
            yi = tem.label_indices(y[burst], int(burst.sum()))
            cands, _ = tem._rotation_search(tem._validate(), tem.source_terms_,
                                            tem._prepare_X(X[burst]), yi, n)
            true = float(cell[0]) % C
            rot, Hc, _, _ = min(cands, key=lambda c: min(abs(c[0] - true), C - abs(c[0] - true)))
            row["true_start"] = ratio(Hc)
            ref = TransferEM(source, **dict(s.transfer, structure=mask, shrink_to=Hc))
            ref.fit(X[burst], y[burst], H_init=Hc)
            row["true_refined"] = ratio(ref.H_)
        from .model.transfer import ring_rotation_matrix, rotation_inverse

        S = rotation_inverse(n, C, true, tem.rotation_ridge)
        row["true_oracle_gain"] = ratio(paired_type_gains(S, X[cal], X0[cal], n // C))
        count = np.isin(np.array(s.feature_names)[np.arange(n) % (n // C)], COUNT_FEATURES)
        Sm = np.where(count[:, None], ring_rotation_matrix(n, C, true).T, S)
        row["mixed_oracle_gain"] = ratio(paired_type_gains(Sm, X[cal], X0[cal], n // C))
        row["oracle_map"] = ratio(paired_channel_map(X[cal], X0[cal], C))
        out[(float(cell[0]), float(cell[1]))] = row
    return out


def loss_breakdown(data_dir, settings=None, cells=BREAKDOWN_CELLS, subjects=None) -> str:
    """Mean over subjects of :func:`breakdown_subject`, as a Markdown table.

    Parameters
    ----------
    data_dir : path
        Folder of ``ciil_es_sNN_{baseline,shifted}.npz`` files.
    settings : EvalSettings, optional
        Default: the daemon's settings.
    cells : sequence of (rotation, gain)
    subjects : set of int, optional
        Subject ids (default all).

    Returns
    -------
    str
    """
    from .evaluate import require_subjects

    if settings is None:
        from .config import load_config
        from .evaluate import EvalSettings

        settings = EvalSettings.from_config(load_config(None, env={}))
    rows = [breakdown_subject(b, settings, cells) for _, b, _ in
            require_subjects(data_dir, subjects)]
    lines = ["| rotation | gain | " + " | ".join(BREAKDOWN_ROWS) + " |",
             "|---" * (len(BREAKDOWN_ROWS) + 2) + "|"]
    for cell in cells:
        key = (float(cell[0]), float(cell[1]))
        vals = [f"{100 * np.mean([r[key][m] for r in rows]):.1f} %" for m in BREAKDOWN_ROWS]
        lines.append(f"| {key[0]:g} | {key[1]:g} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - benchmark entry
    import argparse

    ap = argparse.ArgumentParser(description="fit times, or the loss breakdown on real EMG")
    ap.add_argument("--breakdown", metavar="DATA_DIR", help="loss breakdown on this folder")
    ap.add_argument("--subjects", help="comma-separated subject ids (default all)")
    a = ap.parse_args()
    if a.breakdown:
        subs = {int(v) for v in a.subjects.split(",")} if a.subjects else None
        print(loss_breakdown(a.breakdown, subjects=subs))
    else:
        print(time_fits())
