"""Speed-across-the-shift evaluation, checked against independent numpy/scipy computations."""

import json

import numpy as np
import pytest
from scipy import stats

from emtl_stream.eval_speed import agreement, estimate_roll, roll_blocks, speed_subject
from emtl_stream.evaluate import EvalSettings
from emtl_stream.model.gmm import LabelledGMM
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.pipeline.offline import featurize
from emtl_stream.sim.synthetic import SyntheticArmband
from emtl_stream.sim.synthetic_ramps import ramp_session

WIN, STEP = 40, 10  # 200 ms / 50 ms at 200 Hz


def test_roll_blocks_equals_features_of_the_rolled_signal(rng):
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), n_channels=8, fs=200.0)
    W = rng.normal(0, 20, (5, WIN, 8))
    X, _ = ext.transform_batch(W)
    for k in (-1, 1, 3):
        Xr, _ = ext.transform_batch(np.roll(W, k, axis=2))
        np.testing.assert_allclose(roll_blocks(X, k, 8), Xr, atol=1e-12)


def test_estimate_roll_finds_the_synthetic_rotation():
    ext = FeatureExtractor(("mav", "wl"), 8, 1000.0)
    feats = {}
    for shift in (0, 1):
        band = SyntheticArmband(8, 1000.0, seed=2, shift=shift)
        emg, lab, _, s, n = ramp_session(band, range(5), seconds_per_class=2.0)
        X, seg, _ = featurize(emg, 1000.0, ext, 200.0, 50.0, s, n)
        feats[shift] = X, lab[s[seg]]
    cols = [ext.feature_names.index(f"ch{c}_mav") for c in range(8)]
    # The shifted ring sees on channel c what the unshifted one sees on c - 1.
    assert estimate_roll(*feats[0], *feats[1], cols, 8) == -1
    assert estimate_roll(*feats[1], *feats[0], cols, 8) == 1


def test_agreement_matches_scipy(rng):
    y = np.repeat([0, 1, 2], 50)
    a, b = rng.uniform(0, 1, 150), rng.uniform(0, 1, 150)
    b[y == 1] = 0.3 * a[y == 1] + 0.1
    corr, mae = agreement(a, b, y, [1, 2])
    want_corr = np.mean([stats.pearsonr(a[y == c], b[y == c])[0] for c in (1, 2)])
    want_mae = np.mean([np.abs(a[y == c] - b[y == c]).mean() for c in (1, 2)])
    assert corr == pytest.approx(want_corr, abs=1e-12)
    assert mae == pytest.approx(want_mae, abs=1e-12)
    # a constant series has no correlation: left out, not NaN in the mean
    b[y == 2] = 0.0
    assert agreement(a, b, y, [1, 2])[0] == pytest.approx(1.0)


def _naive(path):
    """Hudgins features (channel-major), MAV sum, class and rep of every window."""
    z = np.load(path, allow_pickle=False)
    emg = z["emg"].astype(float)
    X, A, y, rep, off, W = [], [], [], [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        for a in range(0, n - WIN + 1, STEP):
            w = emg[s + a:s + a + WIN]
            d = np.diff(w, axis=0)
            X.append(np.stack([np.abs(w).mean(0), np.abs(d).sum(0), (w[:-1] * w[1:] < 0).sum(0),
                               (d[:-1] * d[1:] < 0).sum(0)], 1).ravel())
            W.append(w)
            y.append(c)
            rep.append(r)
            off.append((a + WIN) / 200.0)
    return np.array(X), np.array(W), np.array(y), np.array(rep), np.array(off)


def test_subject_speed_scores_match_an_independent_computation(emg_dir):
    b, s = emg_dir / "ciil_es_s00_baseline.npz", emg_dir / "ciil_es_s00_shifted.npz"
    settings = EvalSettings(feature_names=("mav", "wl", "zc", "ssc"))
    row = speed_subject(b, s, settings, bursts=(1.0,))
    Xb, _, yb, rb, _ = _naive(b)
    Xs, Ws, ys, rs, _ = _naive(s)
    tr, te = rb <= 2, rs >= 2
    src = LabelledGMM(covariance_type="tied", random_state=0).fit(Xb[tr], yb[tr])
    amp_b = Xb[:, 0::4].sum(1)
    lo = {c: np.percentile(amp_b[tr & (yb == c)], 10) for c in range(5)}
    hi = {c: np.percentile(amp_b[tr & (yb == c)], 70) for c in range(5)}

    def speed(amp, cls):
        out = np.array([np.clip((v - lo[c]) / (hi[c] - lo[c]), 0, 1) for v, c in zip(amp, cls)])
        out[cls == 2] = 0.0  # No_Motion
        return out

    k = row["roll"]
    Wref = np.roll(Ws[te], k, axis=2)  # the raw signal as before the shift
    amp_ref = np.abs(Wref).mean(1).sum(1)
    Xref = np.roll(Xs[te].reshape(-1, 8, 4), k, axis=1).reshape(-1, 32)
    ref = speed(amp_ref, src.predict(Xref))
    got = speed(Xs[te][:, 0::4].sum(1), src.predict(Xs[te]))
    yt = ys[te]
    maes = [np.abs(got[yt == c] - ref[yt == c]).mean() for c in (0, 1, 3, 4)]
    assert row["mae_pred/no_adapt"] == pytest.approx(np.mean(maes), abs=1e-6)
    assert row["ref_acc"] == pytest.approx(np.mean(src.predict(Xref) == yt), abs=1e-9)
    # A summed amplitude is invariant to a whole-electrode roll: with the true class
    # even the unadapted speed equals the reference.
    assert row["mae_true/no_adapt"] == pytest.approx(0.0, abs=1e-9)
    # The transfer map brings the published speed back to the unshifted one.
    assert row["mae_pred/transfer@1"] < 0.5 * row["mae_pred/no_adapt"]
    assert row["corr_pred/transfer@1"] > row["corr_pred/no_adapt"]


def test_cli_evaluate_speed_writes_json(emg_dir, tmp_path, capsys):
    from emtl_stream.cli import main

    out = tmp_path / "speed.json"
    assert main(["evaluate", str(emg_dir), "--speed", "--subjects", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["subjects"]) == {"1"}
    assert "corr_pred/transfer@1" in result["mean"]
    assert "| **mean** |" in capsys.readouterr().out


def test_ramp_training_maps_activation_level_better_than_full_strength_holds():
    from emtl_stream.eval_speed import ramp_vs_hold

    r = ramp_vs_hold(seeds=(1,), seconds_per_class=3.0)
    assert set(r) == {"ramp", "hold", "hold3"}
    for p in r.values():
        assert all(np.isfinite(v) for v in p.values())
    assert r["ramp"]["spearman"] > r["hold"]["spearman"] + 0.2
    assert r["ramp"]["mae"] < r["hold"]["mae"]
    assert r["ramp"]["usable"] > r["hold"]["usable"]
