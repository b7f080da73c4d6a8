"""``emtl-stream evaluate DATA_DIR --speed``: does proportional speed survive an electrode shift?

Per subject of the CIIL electrode-shift recordings (Campbell et al., J. NeuroEng.
Rehabil. 21:70, 2024), with the daemon's features, source model and transfer settings
(:class:`~emtl_stream.evaluate.EvalSettings`):

* the source model and the speed calibration are fitted on baseline reps 0-2;
* the test windows are shifted reps 2-7; the transfer map is fitted on the first T
  seconds of every class of shifted rep 0 (as ``emtl-stream evaluate``);
* **reference ("before the shift")**: the shift of these recordings is a rotation
  of the armband by exactly one electrode, so every shifted window has an exact
  unshifted twin: its channel blocks rolled back by ``k`` (``k`` is estimated per
  subject as the roll that best matches the per-class mean MAV pattern of the
  baseline). The reference speed is the speed of that twin;
* ``no_adapt``: the speed of the shifted window as it is (``z = x``);
* ``transfer@T``: the speed of ``z = H x + b`` with transfer EM's map;
* ``raw_amp@T``: for comparison, the class from transfer EM but the amplitude read
  from the unmapped ``x`` (in ``true`` mode this equals ``no_adapt``).

Scores, over the non-rest classes, on windows of the same (true) class: Pearson
correlation and mean absolute error between a condition's speed and the reference
speed, averaged over classes. Two ways to pick the per-class scaling:

* ``true`` class: the amplitude mapping alone (the true class's scaling);
* ``pred``: what a client receives, each condition with its own predicted class
  (the reference with the source model's prediction on the unshifted twin).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .logs import logger

SPEED_BURSTS = (0.5, 1.0)


def roll_blocks(X: np.ndarray, k: int, n_channels: int) -> np.ndarray:
    """Roll the channel blocks of channel-major features by ``k`` channels.

    Parameters
    ----------
    X : ndarray of shape (n, n_channels * features_per_channel)
    k : int
        ``np.roll`` shift along the channel axis.
    n_channels : int

    Returns
    -------
    ndarray of shape (n, n_features)
        Equal to the features of the raw signal rolled by ``k`` channels.
    """
    n = X.shape[0]
    return np.roll(X.reshape(n, n_channels, -1), k, axis=1).reshape(n, -1)


def estimate_roll(Xb, yb, Xs, ys, columns, n_channels: int) -> int:
    """Channel roll ``k`` with ``roll(shifted, k)`` closest to the baseline.

    Compared on the per-class mean of the per-channel amplitude feature
    (``columns``, one per channel), each pattern scaled to unit norm.

    Parameters
    ----------
    Xb, Xs : ndarray of shape (n_b, n_features), (n_s, n_features)
    yb, ys : ndarray of shape (n_b,), (n_s,)
    columns : sequence of int, length n_channels
    n_channels : int

    Returns
    -------
    int in ``-(n_channels // 2) + 1 .. n_channels // 2``
    """
    cols = np.asarray(columns)
    classes = np.intersect1d(np.unique(yb), np.unique(ys))
    B = np.stack([Xb[yb == c][:, cols].mean(0) for c in classes])
    S = np.stack([Xs[ys == c][:, cols].mean(0) for c in classes])
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    S /= np.linalg.norm(S, axis=1, keepdims=True)
    ks = list(range(-(n_channels // 2) + 1, n_channels // 2 + 1))
    err = [np.sum((np.roll(S, k, axis=1) - B) ** 2) for k in ks]
    return int(ks[int(np.argmin(err))])


def agreement(s, s_ref, y, classes) -> tuple[float, float]:
    """Per-class Pearson correlation and MAE between two speed series, averaged.

    Parameters
    ----------
    s, s_ref : ndarray of shape (n,)
    y : ndarray of shape (n,)
        True class of each window.
    classes : sequence
        Classes to score (the non-rest ones).

    Returns
    -------
    corr : float
        Mean over classes of the correlation (classes where either series is
        constant are left out; NaN if all are).
    mae : float
        Mean over classes of the mean absolute difference.
    """
    corr, mae = [], []
    for c in classes:
        sel = y == c
        if not sel.any():
            continue
        a, b = s[sel], s_ref[sel]
        mae.append(float(np.mean(np.abs(a - b))))
        if a.std() > 0 and b.std() > 0:
            corr.append(float(np.corrcoef(a, b)[0, 1]))
    return (float(np.mean(corr)) if corr else float("nan"),
            float(np.mean(mae)) if mae else float("nan"))


def speed_subject(baseline: Path, shifted: Path, settings, speed_config=None,
                  bursts=SPEED_BURSTS) -> dict:
    """Speed agreement for one subject.

    Parameters
    ----------
    baseline, shifted : Path
        ``ciil_es_sNN_baseline.npz`` and ``ciil_es_sNN_shifted.npz``.
    settings : EvalSettings
    speed_config : SpeedConfig, optional
        Measure and percentiles (default: the ``[speed]`` defaults).
    bursts : sequence of float
        Burst lengths T (s) of the transfer fits.

    Returns
    -------
    dict
        ``roll`` (estimated k), ``ref_acc`` (source accuracy on the unshifted twins),
        and for each condition ``c`` in ``no_adapt``, ``transfer@T``:
        ``corr_true/c``, ``mae_true/c``, ``corr_pred/c``, ``mae_pred/c``.
    """
    from .config import SpeedConfig
    from .evaluate import SHIFT_CAL_REP, SHIFT_TEST_REPS, TRAIN_REPS, _load
    from .model.gmm import LabelledGMM
    from .model.speed import SpeedCalibration
    from .model.transfer import TransferEM
    from .pipeline.features import FeatureExtractor

    sc = speed_config or SpeedConfig()
    ext = FeatureExtractor(settings.feature_names, n_channels=8, fs=200.0)
    base, shift = _load(baseline, settings), _load(shifted, settings)
    names = list(base["class_names"])
    train = np.isin(base["rep"], TRAIN_REPS)
    Xtr, ytr = base["X"][train], base["y"][train]
    source = LabelledGMM(n_components_per_class=settings.n_components_per_class,
                         covariance_type=settings.covariance_type, random_state=0).fit(Xtr, ytr)
    cal = SpeedCalibration.fit(Xtr, np.asarray(names)[ytr], names,
                               feature_names=ext.feature_names, n_channels=8,
                               measure=sc.measure, low_percentile=sc.low_percentile,
                               high_percentile=sc.high_percentile)
    k = estimate_roll(Xtr, ytr, shift["X"], shift["y"], cal.columns, 8)
    test = np.isin(shift["rep"], SHIFT_TEST_REPS)
    Xt, yt = shift["X"][test], shift["y"][test]
    classes = np.asarray(source.classes_)
    scored = [i for i, name in enumerate(names) if not cal.rest[i]]

    def idx_of(pred):
        return np.searchsorted(classes, pred)

    Zref = roll_blocks(Xt, k, 8)
    pred_ref = source.predict(Zref)
    ref_true = cal.speed_batch(Zref, yt)
    ref_pred = cal.speed_batch(Zref, idx_of(pred_ref))
    out = {"roll": k, "ref_acc": float(np.mean(pred_ref == yt))}

    def score(name, Z, pred):
        for mode, s, r in (("true", cal.speed_batch(Z, yt), ref_true),
                           ("pred", cal.speed_batch(Z, idx_of(pred)), ref_pred)):
            out[f"corr_{mode}/{name}"], out[f"mae_{mode}/{name}"] = agreement(s, r, yt, scored)

    score("no_adapt", Xt, source.predict(Xt))
    cal_rep = shift["rep"] == SHIFT_CAL_REP
    for T in bursts:
        sel = cal_rep & (shift["offset_s"] <= T + 1e-9)
        tem = TransferEM(source, ring_channels=settings.ring_channels, **settings.transfer)
        tem.fit(shift["X"][sel], shift["y"][sel])
        pred = tem.predict(Xt)
        score(f"transfer@{T:g}", tem.transform(Xt), pred)
        # The alternative: class from the map, amplitude from the raw electrodes (a sum
        # over a ring is invariant to a whole-electrode rotation, not to other changes).
        score(f"raw_amp@{T:g}", Xt, pred)
    return out


def speed_dir(data_dir, settings=None, speed_config=None, subjects=None, progress=None) -> dict:
    """:func:`speed_subject` for every subject; ``{"subjects": {id: row}, "mean": row}``."""
    from .config import load_config
    from .evaluate import EvalSettings, require_subjects

    if settings is None or speed_config is None:
        cfg = load_config(None, env={})
        settings = settings or EvalSettings.from_config(cfg)
        speed_config = speed_config or cfg.speed
    pairs = require_subjects(data_dir, subjects)
    rows = {}
    for sid, b, s in pairs:
        rows[sid] = speed_subject(b, s, settings, speed_config)
        logger.info("subject %d speed: %s", sid, rows[sid])
        if progress:
            progress(sid, rows[sid])
    keys = [k for k in rows[pairs[0][0]] if k != "roll"]
    mean = {k: float(np.nanmean([r[k] for r in rows.values()])) for k in keys}
    return {"subjects": rows, "mean": mean, "measure": speed_config.measure,
            "percentiles": [speed_config.low_percentile, speed_config.high_percentile]}


def _conditions(result) -> list[str]:
    return [k.split("/", 1)[1] for k in result["mean"] if k.startswith("corr_true/")]


def to_markdown(result) -> str:
    """Per-subject correlation / MAE table and the mean row, as Markdown."""
    conds = _conditions(result)
    cols = [f"{m}/{c}" for c in conds for m in ("corr_true", "mae_true", "corr_pred", "mae_pred")]
    head = ["subject", "roll k", "ref acc"] + [c.replace("/", " ") for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def f(v):
        return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"

    for sid, row in sorted(result["subjects"].items()):
        lines.append(f"| {sid} | {row['roll']:+d} | {f(row['ref_acc'])} | "
                     + " | ".join(f(row[c]) for c in cols) + " |")
    m = result["mean"]
    lines.append("| **mean** | | " + f"**{f(m['ref_acc'])}** | "
                 + " | ".join(f"**{f(m[c])}**" for c in cols) + " |")
    return "\n".join(lines)


def main(args) -> int:
    """CLI entry of ``emtl-stream evaluate DATA_DIR --speed [--json F] [--markdown F]``."""
    import sys

    from .config import load_config
    from .evaluate import EvalSettings, write_report

    cfg = load_config(getattr(args, "config", None))
    subjects = {int(s) for s in args.subjects.split(",")} if args.subjects else None

    def progress(sid, row):
        print(f"subject {sid:2d}: roll {row['roll']:+d}  "
              f"corr(pred) no-adapt {row['corr_pred/no_adapt']:.3f}  "
              f"transfer@1s {row['corr_pred/transfer@1']:.3f}", file=sys.stderr, flush=True)

    result = speed_dir(args.data_dir, EvalSettings.from_config(cfg), cfg.speed, subjects,
                       progress)
    write_report(to_markdown(result), result, args)
    return 0


# ---------------------------------------------------------------- ramps vs holds (synthetic)
RAMP_LEVELS = (0.1, 1.0)


def ramp_vs_hold(seeds=(0, 1, 2, 3, 4), seconds_per_class: float = 4.0, fs: float = 1000.0,
                 speed_config=None) -> dict:
    """Compare speed calibrated from slow ramps with speed calibrated from static holds.

    On the synthetic armband, each seed trains on one protocol per row
    (``ramp``: rest-to-strong ramps from level 0.1 to 1.0; ``hold``: static holds at
    level 1.0; ``hold3``: holds at levels 0.4, 0.7 and 1.0, each a third of the time),
    then is tested on holds at ten known levels 0.1 .. 1.0 of every class.

    Parameters
    ----------
    seeds : sequence of int
    seconds_per_class : float
        Training seconds per class, equal for every protocol.
    fs : float
    speed_config : SpeedConfig, optional

    Returns
    -------
    dict
        ``{protocol: {"spearman", "mae", "usable", "accuracy"}}`` averaged over seeds
        and non-rest classes: Spearman rank correlation of speed with the true level;
        MAE against the linear target ``(level - 0.1) / 0.9``; ``usable``, the fraction
        of test levels whose median speed lies strictly inside (0.05, 0.95); and the
        window accuracy of a source model trained on the same protocol.
    """
    from scipy import stats

    from .config import SpeedConfig
    from .model.gmm import LabelledGMM
    from .model.speed import SpeedCalibration
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import featurize
    from .sim.synthetic import SyntheticArmband
    from .sim.synthetic_ramps import level_session

    sc = speed_config or SpeedConfig()
    lo_l, hi_l = RAMP_LEVELS
    test_levels = np.linspace(lo_l, hi_l, 10)
    thirds = (0.4, 0.7, 1.0)
    protocols = {
        "ramp": lambda i, n: np.linspace(lo_l, hi_l, n),
        "hold": lambda i, n: np.full(n, hi_l),
        "hold3": lambda i, n: np.repeat(thirds, -(-n // 3))[:n],
    }
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), 8, fs)
    scores = {p: {"spearman": [], "mae": [], "usable": [], "accuracy": []} for p in protocols}
    for seed in seeds:
        for pname, prof in protocols.items():
            band = SyntheticArmband(8, fs, seed=seed)
            names = np.asarray(band.class_names)
            k_all = range(len(names))
            emg, lab, _, s, n = level_session(band, k_all, seconds_per_class, prof)
            X, seg, _ = featurize(emg, fs, ext, 200.0, 50.0, s, n)
            y = lab[s[seg]]
            cal = SpeedCalibration.fit(X, names[y], names, feature_names=ext.feature_names,
                                       n_channels=8, measure=sc.measure,
                                       low_percentile=sc.low_percentile,
                                       high_percentile=sc.high_percentile)
            model = LabelledGMM(covariance_type="tied", random_state=0).fit(X, y)
            correct, total = 0, 0
            for k in range(1, len(names)):
                sp, lev = [], []
                for level in test_levels:
                    e, _, _, s2, n2 = level_session(band, [k], 1.5,
                                                    lambda i, m, v=level: np.full(m, v))
                    Xt, _, _ = featurize(e, fs, ext, 200.0, 50.0, s2, n2)
                    Xt = Xt[4:]  # past the activation lag of the level change
                    correct += int(np.sum(model.predict(Xt) == k))
                    total += len(Xt)
                    sp.append(cal.speed_batch(Xt, np.full(len(Xt), k)))
                    lev.append(np.full(len(Xt), level))
                sp, lev = np.concatenate(sp), np.concatenate(lev)
                target = (lev - lo_l) / (hi_l - lo_l)
                scores[pname]["spearman"].append(float(stats.spearmanr(sp, lev)[0]))
                scores[pname]["mae"].append(float(np.mean(np.abs(sp - target))))
                med = np.array([np.median(sp[lev == v]) for v in test_levels])
                scores[pname]["usable"].append(float(np.mean((med > 0.05) & (med < 0.95))))
            scores[pname]["accuracy"].append(correct / total)
    return {p: {m: float(np.nanmean(v)) for m, v in d.items()} for p, d in scores.items()}


def ramps_markdown(result) -> str:
    """The :func:`ramp_vs_hold` result as a Markdown table."""
    lines = ["| training protocol | Spearman(speed, level) | MAE to linear target | "
             "usable levels | accuracy on graded holds |", "|---|---|---|---|---|"]
    for p, r in result.items():
        lines.append(f"| {p} | {r['spearman']:.3f} | {r['mae']:.3f} | {r['usable']:.2f} | "
                     f"{r['accuracy']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m emtl_stream.eval_speed: the synthetic ramp study
    print(ramps_markdown(ramp_vs_hold()))
