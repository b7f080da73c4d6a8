"""Offline synthetic-armband streams for the shift-detector and zero-label tests (no LSL).

A stream is classes performed in turn (a repetition is every class once), featurized
as the daemon does; windows of the activation transition after a class change are
kept, as live, so the detectors see the same artefacts as in a daemon.
"""

from __future__ import annotations

import numpy as np

from emtl_stream.daemon.bundle import fit_source_model
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.pipeline.offline import featurize
from emtl_stream.sim.synthetic import SyntheticArmband

FS = 500.0
N_CHANNELS = 8
FEATURES = ("mav", "wl", "zc", "ssc")
WINDOW_MS, STEP_MS = 200.0, 50.0
SEED = 7


def extractor() -> FeatureExtractor:
    return FeatureExtractor(FEATURES, n_channels=N_CHANNELS, fs=FS)


def stream(arm: SyntheticArmband, seconds_per_class: float, reps: int, classes=None,
           weights=None):
    """Features (N, n) and labels (N,) of ``reps`` repetitions, in stream order.

    ``weights`` (one per class) scales each class's duration (e.g. a rest-dominated mix).
    """
    classes = list(arm.class_names if classes is None else classes)
    weights = [1.0] * len(classes) if weights is None else list(weights)
    ext = extractor()
    emg, lab = [], []
    for _ in range(reps):
        for c, w in zip(classes, weights):
            n = int(seconds_per_class * w * FS)
            emg.append(arm.generate(n, c))
            lab += [c] * n
    emg = np.vstack(emg)
    lab = np.asarray(lab)
    X, _, offset = featurize(emg, FS, ext, WINDOW_MS, STEP_MS)
    window = int(round(WINDOW_MS * FS / 1000.0))
    y = lab[offset + window - 1]  # label of the window's last sample, as a live stream
    return X, y


def trained(seed: int = SEED, seconds_per_class: float = 3.0):
    """(armband, source model, held-out X) — model trained on 2 unshifted reps."""
    arm = SyntheticArmband(n_channels=N_CHANNELS, fs=FS, seed=seed)
    X, y = stream(arm, seconds_per_class, 2)
    model = fit_source_model(X, y, kind="lgmm", covariance_type="tied")
    X_ho, _ = stream(arm, seconds_per_class, 1)
    return arm, model, X_ho
