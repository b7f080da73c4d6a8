"""``emtl-stream evaluate DATA_DIR``: offline evaluation on real electrode-shift recordings.

Protocol (issue 5), per subject of the shared CIIL electrode-shift data set
(Campbell et al., J. NeuroEng. Rehabil. 21:70, 2024, doi:10.1186/s12984-024-01355-4):

* features: the daemon's default feature set, window and step;
* source model: the daemon's default source model, trained on baseline reps 0-2;
* ``within``: tested on baseline reps 3-4;
* everything else is tested on shifted reps 2-7 (blocks 2-4), windows inside segments;
* ``no_adapt``: the source model on shifted data;
* ``transfer@T``: transfer EM with the daemon's default settings, calibrated on
  the first T seconds of every class of shifted rep 0 (a window counts when it
  ends within T s of the segment start; with ``--lead-in L`` it must also start
  L s or more after it, the rule of the daemon's prompted bursts, see
  :func:`burst_rows`);
* ``transfer3@T``: the same with only 3 of the 5 classes in the burst, averaged
  over all 10 such subsets (the model must still recognise the other two);
* ``slda@T`` / ``slda3@T``: shrinkage-LDA retrained on the same burst (the fair
  naive competitor; with 3 classes it can never output the other two);
* ``ref@T``: the reference package's SLGMM transfer model on the same source, if
  ``em-transfer-learning`` is installed and ``--reference`` is given.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .logs import logger

BURST_SECONDS = (0.25, 0.5, 1.0, 2.0)
TRAIN_REPS, WITHIN_TEST_REPS = (0, 1, 2), (3, 4)
SHIFT_CAL_REP, SHIFT_TEST_REPS = 0, (2, 3, 4, 5, 6, 7)
N_PARTIAL_CLASSES = 3


@dataclass
class EvalSettings:
    """What is evaluated.

    ``EvalSettings.from_config(load_config())`` gives the daemon's settings; the bare
    dataclass defaults are an unstructured TransferEM on Hudgins features.
    """

    feature_names: tuple = ("mav", "wl", "zc", "ssc")
    window_ms: float = 200.0
    step_ms: float = 50.0
    covariance_type: str = "tied"
    n_components_per_class: int = 1
    transfer: dict = field(default_factory=dict)  # TransferEM keyword arguments
    ring_channels: int | None = 8
    #: Seconds of every prompt left out of the burst (``--lead-in``); 0 keeps the
    #: published protocol, ``[calibration] lead_in_s`` (0.5) is what the daemon records.
    lead_in_s: float = 0.0

    @classmethod
    def from_config(cls, config) -> "EvalSettings":
        """Build from a :class:`emtl_stream.config.Config` (the daemon's settings).

        Parameters
        ----------
        config : Config
            The daemon's configuration.
        """
        from .daemon.bundle import transfer_settings

        # The daemon's own policy: the roll search and the map structure as it runs them.
        transfer, ring_channels = transfer_settings(config, n_channels=8)
        return cls(
            feature_names=tuple(config.features.names),
            window_ms=float(config.features.window_ms),
            step_ms=float(config.features.step_ms),
            covariance_type=config.model.covariance_type,
            n_components_per_class=int(config.model.n_components_per_class),
            transfer=transfer,
            ring_channels=ring_channels,
        )


def _load(path: Path, settings: EvalSettings) -> dict:
    from .io.recordings import load_ciil_session
    from .pipeline.features import FeatureExtractor
    from .pipeline.offline import ciil_features

    extractor = FeatureExtractor(settings.feature_names, n_channels=8, fs=200.0)
    return ciil_features(load_ciil_session(path), extractor, settings.window_ms,
                         settings.step_ms)


def burst_rows(offset_s, seconds: float, window_s: float, lead_in_s: float = 0.0
               ) -> np.ndarray:
    """Windows of a labelled burst: those lying inside ``[lead_in_s, lead_in_s + seconds]``.

    With ``lead_in_s = 0`` this is "the first ``seconds`` of every class" (a window
    counts when it ends within ``seconds`` of its segment's start). A positive lead-in
    is the daemon's rule for prompted bursts (``[calibration] lead_in_s``): the user is
    still moving into the gesture, so no window that overlaps the lead-in is labelled.

    Parameters
    ----------
    offset_s : ndarray of shape (N,)
        Time of each window's end since the start of its segment, in seconds.
    seconds : float
        Recorded seconds per class.
    window_s : float
        Window length in seconds.
    lead_in_s : float
        Seconds after the segment start that are not recorded.

    Returns
    -------
    ndarray of shape (N,), bool
    """
    off = np.asarray(offset_s, dtype=np.float64)
    eps = 1e-9  # float round-off in offsets built from sample counts
    return (off <= lead_in_s + seconds + eps) & (off - window_s >= lead_in_s - eps)


def burst_description(seconds: str, lead_in_s: float) -> str:
    """Say which windows a burst holds, for a report (see :func:`burst_rows`).

    Parameters
    ----------
    seconds : str
        The recorded length per class as text, e.g. ``"0.5 s"`` or ``"T s"``.
    lead_in_s : float
        Seconds left out at the start of every prompt.
    """
    if lead_in_s:
        return f"{seconds} of every class after a {lead_in_s:g} s lead-in"
    return f"the first {seconds} of every class"


def settings_from_args(args) -> EvalSettings:
    """Build the daemon's settings (``--config`` if given) with the command's ``--lead-in``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``emtl-stream evaluate`` arguments.
    """
    from .config import load_config

    settings = EvalSettings.from_config(load_config(getattr(args, "config", None)))
    settings.lead_in_s = float(getattr(args, "lead_in", 0.0) or 0.0)
    return settings


def _accuracy(pred, y) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def _reference_transfer(source, X, y):  # pragma: no cover - optional, benchmark-only path
    """H from the reference package's SLGMM transfer model (GPLv3, used via import only)."""
    from em_transfer_learning.transfer_learning import SLGMM_transfer_model

    comps = source.to_components()

    class _Shim:  # the reference reads these attribute names
        pass

    shim = _Shim()
    shim._Mus = comps.means.T.copy()
    shim._Lambda = comps.precisions[0]
    shim._Pi = np.exp(comps.log_weights)
    shim._P_Y = np.exp(comps.log_label_given_comp)
    shim._labels = np.arange(len(comps.classes))
    model = SLGMM_transfer_model(shim)
    model.fit(X, y)
    return model._H


def evaluate_subject(baseline: Path, shifted: Path, settings: EvalSettings,
                     reference: bool = False) -> dict:
    """Evaluate one subject.

    Parameters
    ----------
    baseline, shifted : Path
        The subject's ``ciil_es_sNN_baseline.npz`` and ``..._shifted.npz``.
    settings : EvalSettings
    reference : bool
        Also run the reference package (if importable).

    Returns
    -------
    dict
        Accuracies keyed ``within``, ``no_adapt``, ``transfer@T``, ``transfer3@T``,
        ``slda@T``, ``slda3@T`` (and ``ref@T``), plus ``fit_ms@T`` (median fit time)
        and ``roll@T`` (the ring roll transfer EM picked).
    """
    from .model.baselines import ShrinkageLDA
    from .model.gmm import LabelledGMM
    from .model.transfer import TransferEM

    base, shift = _load(baseline, settings), _load(shifted, settings)
    train = np.isin(base["rep"], TRAIN_REPS)
    source = LabelledGMM(n_components_per_class=settings.n_components_per_class,
                         covariance_type=settings.covariance_type, random_state=0)
    source.fit(base["X"][train], base["y"][train])
    within = np.isin(base["rep"], WITHIN_TEST_REPS)
    test = np.isin(shift["rep"], SHIFT_TEST_REPS)
    Xt, yt = shift["X"][test], shift["y"][test]
    out = {
        "within": _accuracy(source.predict(base["X"][within]), base["y"][within]),
        "no_adapt": _accuracy(source.predict(Xt), yt),
    }
    classes = np.unique(base["y"])
    cal_rep = shift["rep"] == SHIFT_CAL_REP
    for T in BURST_SECONDS:
        sel = cal_rep & burst_rows(shift["offset_s"], T, settings.window_ms / 1e3,
                                   settings.lead_in_s)
        Xc, yc = shift["X"][sel], shift["y"][sel]
        t0 = time.perf_counter()
        tem = TransferEM(source, ring_channels=settings.ring_channels, **settings.transfer)
        tem.fit(Xc, yc)
        fit_ms = 1e3 * (time.perf_counter() - t0)
        out[f"transfer@{T:g}"] = _accuracy(tem.predict(Xt), yt)
        out[f"fit_ms@{T:g}"] = fit_ms
        out[f"roll@{T:g}"] = getattr(tem, "best_roll_", None)
        out[f"slda@{T:g}"] = _accuracy(ShrinkageLDA().fit(Xc, yc).predict(Xt), yt)
        part_t, part_s = [], []
        for subset in itertools.combinations(classes, N_PARTIAL_CLASSES):
            keep = np.isin(yc, subset)
            tem3 = TransferEM(source, ring_channels=settings.ring_channels, **settings.transfer)
            tem3.fit(Xc[keep], yc[keep])
            part_t.append(_accuracy(tem3.predict(Xt), yt))
            part_s.append(_accuracy(ShrinkageLDA().fit(Xc[keep], yc[keep]).predict(Xt), yt))
        out[f"transfer3@{T:g}"] = float(np.mean(part_t))
        out[f"slda3@{T:g}"] = float(np.mean(part_s))
        if reference:
            try:
                H = _reference_transfer(source, Xc, np.searchsorted(classes, yc))
            except ImportError:
                reference = False
                continue
            # The reference returns an all-NaN H when its E-step underflows (its
            # defect W3): recorded as a failure, not hidden in an average.
            out[f"ref_failed@{T:g}"] = float(not np.all(np.isfinite(H)))
            out[f"ref@{T:g}"] = (_accuracy(source.predict(Xt @ H.T), yt)
                                 if np.all(np.isfinite(H)) else float("nan"))
    return out


def find_subjects(data_dir: Path, subjects=None) -> list[tuple[int, Path, Path]]:
    """Pairs of (subject, baseline file, shifted file) present in ``data_dir``.

    Parameters
    ----------
    data_dir : Path
        Folder of the CIIL electrode-shift recordings.
    subjects : iterable of int, optional
        Only these subjects.
    """
    pairs = []
    for b in sorted(Path(data_dir).glob("ciil_es_s*_baseline.npz")):
        sid = int(re.search(r"_s(\d+)_", b.name).group(1))
        s = b.with_name(b.name.replace("_baseline", "_shifted"))
        if s.exists() and (subjects is None or sid in subjects):
            pairs.append((sid, b, s))
    return pairs


def require_subjects(data_dir, subjects=None) -> list:
    """:func:`find_subjects`, or FileNotFoundError naming the folder when it finds none.

    Parameters
    ----------
    data_dir : str or Path
        Folder of the CIIL electrode-shift recordings.
    subjects : iterable of int, optional
        Only these subjects.
    """
    pairs = find_subjects(Path(data_dir), subjects)
    if not pairs:
        raise FileNotFoundError(f"no ciil_es_sNN_baseline.npz/shifted.npz pairs in {data_dir}")
    return pairs


def write_report(text: str, result, args) -> None:
    """Print ``text`` and write it (``--markdown``) and ``result`` (``--json``) if asked.

    Parameters
    ----------
    text : str
        The Markdown table(s).
    result : dict
        What ``--json`` writes (values JSON cannot hold are written as text).
    args : argparse.Namespace
        With ``json`` and ``markdown``: file paths or None.
    """
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


def evaluate_dir(data_dir, settings: EvalSettings | None = None, subjects=None,
                 reference: bool = False, progress=None) -> dict:
    """Evaluate every subject in ``data_dir``; returns ``{"subjects": {id: row}, "mean": row}``.

    Parameters
    ----------
    data_dir : str or Path
        Folder of the CIIL electrode-shift recordings.
    settings : EvalSettings, optional
        Default: the daemon's (``EvalSettings.from_config``).
    subjects : iterable of int, optional
        Subjects to run; default all found.
    reference : bool
        Also run the reference package (if importable).
    progress : callable, optional
        Called as ``progress(subject, row)`` after each subject.
    """
    if settings is None:
        from .config import load_config

        settings = EvalSettings.from_config(load_config(None, env={}))
    pairs = require_subjects(data_dir, subjects)
    rows = {}
    for sid, b, s in pairs:
        rows[sid] = evaluate_subject(b, s, settings, reference=reference)
        logger.info("subject %d: %s", sid, rows[sid])
        if progress:
            progress(sid, rows[sid])
    keys = [k for k in rows[pairs[0][0]] if not k.startswith("roll@")]
    # nanmean: a reference fit that failed (NaN H) is counted in ref_failed@T instead
    mean = {k: float(np.nanmean([r[k] for r in rows.values() if k in r])) for k in keys}
    for k in keys:
        if k.startswith("ref_failed@"):
            mean[k] = float(np.sum([r[k] for r in rows.values() if k in r]))
    return {"subjects": rows, "mean": mean, "settings": settings.__dict__}


def _columns(result) -> list[str]:
    mean = result["mean"]
    cols = ["within", "no_adapt"]
    for T in BURST_SECONDS:
        cols += [c for c in (f"transfer@{T:g}", f"slda@{T:g}", f"transfer3@{T:g}",
                             f"slda3@{T:g}", f"ref@{T:g}") if c in mean]
    return cols


def _fmt(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def to_markdown(result) -> str:
    """Per-subject and mean accuracies as a Markdown table.

    Parameters
    ----------
    result : dict
        An :func:`evaluate_dir` result.
    """
    cols = _columns(result)
    lines = ["| subject | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for sid, row in sorted(result["subjects"].items()):
        lines.append(f"| {sid} | " + " | ".join(f"{_fmt(row.get(c))}" for c in cols) + " |")
    means = " | ".join(f"**{_fmt(result['mean'][c])}**" for c in cols)
    lines.append(f"| **mean** | {means} |")
    fit = [f"{T:g} s: {result['mean'][f'fit_ms@{T:g}']:.1f} ms" for T in BURST_SECONDS]
    lines.append("")
    lead = float((result.get("settings") or {}).get("lead_in_s", 0.0))
    lines.append(f"Bursts (T = 0.25-2 s): {burst_description('T s', lead)} of shifted rep 0.")
    lines.append("Mean transfer-EM fit time per burst: " + ", ".join(fit) + ".")
    failed = [f"{T:g} s: {int(result['mean'][f'ref_failed@{T:g}'])}" for T in BURST_SECONDS
              if f"ref_failed@{T:g}" in result["mean"]]
    if failed:
        lines.append("Subjects where the reference package returned a non-finite H (left out "
                     "of its mean): " + ", ".join(failed) + ".")
    return "\n".join(lines)


def main(args) -> int:
    """CLI entry: ``emtl-stream evaluate DATA_DIR [--json F] [--markdown F]``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``emtl-stream evaluate`` arguments.
    """
    import sys

    if getattr(args, "lead_in", 0.0) and (getattr(args, "speed", False)
                                          or getattr(args, "unlabelled", False)):
        from .errors import ConfigError

        raise ConfigError("--lead-in applies to the default and --rotations tables only; "
                          "--speed and --unlabelled keep their published bursts")
    if getattr(args, "speed", False):
        from .eval_speed import main as speed_main

        return speed_main(args)
    if getattr(args, "rotations", False):
        from .eval_rotations import main_rotations

        return main_rotations(args)
    if getattr(args, "unlabelled", False):  # zero-label and shift-detection rows
        from .eval_unlabelled import main as unlabelled_main

        return unlabelled_main(args)
    subjects = None
    if args.subjects:
        subjects = {int(s) for s in args.subjects.split(",")}
    settings = settings_from_args(args)

    def progress(sid, row):
        print(f"subject {sid:2d}: within {row['within']:.3f}  no-adapt {row['no_adapt']:.3f}  "
              f"transfer@0.5s {row['transfer@0.5']:.3f}  slda@0.5s {row['slda@0.5']:.3f}",
              file=sys.stderr, flush=True)

    result = evaluate_dir(args.data_dir, settings, subjects, args.reference, progress)
    write_report(to_markdown(result), result, args)
    return 0
