"""Proportional speed: calibration, bad input, persistence, smoothing, shift invariance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emtl_stream.model.speed import (BAD_NONFINITE, BAD_SILENT, SpeedCalibration,
                                     SpeedSmoother, calibrate_bundle_speed)
from emtl_stream.pipeline.features import FeatureExtractor
from emtl_stream.pipeline.offline import featurize, load_ciil_features, segment_windows
from emtl_stream.sim.synthetic import SyntheticArmband
from emtl_stream.sim.synthetic_ramps import level_session, ramp_session

FEATURES = ("mav", "wl", "zc", "ssc")
FS = 1000.0


def _fit(X, y, classes, ext, **kw):
    return SpeedCalibration.fit(X, y, classes, feature_names=ext.feature_names,
                                n_channels=ext.n_channels, **kw)


# ---------------------------------------------------------------- independent numpy twin
def test_speed_of_a_recording_equals_plain_numpy(emg_dir):
    """Features by the kernel, speed by SpeedCalibration == MAV and percentiles by numpy."""
    path = emg_dir / "ciil_es_s00_baseline.npz"
    ext = FeatureExtractor(FEATURES, n_channels=8, fs=200.0)
    d = load_ciil_features(path, ext, 200.0, 50.0)
    names = d["class_names"]
    y = np.asarray(names)[d["y"]]
    cal = _fit(d["X"], y, names, ext)
    got = cal.speed_batch(d["X"], d["y"])

    # Independent: raw windows -> mean |x| per channel -> sum -> per-class percentiles.
    with np.load(path, allow_pickle=False) as z:
        emg, s, n = z["emg"].astype(np.float64), z["seg_start"], z["seg_len"]
        seg_class = z["seg_class"]
    W, seg, _ = segment_windows(emg, s, n, 40, 10)
    a = np.abs(W).mean(axis=1).sum(axis=1)
    cls = seg_class[seg]
    want = np.zeros(len(a))
    for k, name in enumerate(names):
        if name == "No_Motion":
            continue
        lo, hi = np.percentile(a[cls == k], [10, 70])
        sel = cls == k
        want[sel] = np.clip((a[sel] - lo) / (hi - lo), 0, 1)
    np.testing.assert_array_equal(cls, d["y"])
    np.testing.assert_allclose(got, want, atol=1e-9)
    # The one-window path gives the same numbers as the batch path.
    one = [cal.speed(d["X"][i], int(d["y"][i])) for i in range(0, len(a), 37)]
    np.testing.assert_allclose(one, want[::37], atol=1e-12)
    assert 0.05 < np.mean(want[cls != 2]) < 0.95  # a real spread, not all 0 or all 1


def test_rest_is_zero_and_named_rest_class_overrides():
    ext = FeatureExtractor(("mav",), n_channels=2, fs=200.0)
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(1.0, 0.3, (60, 2))) + 0.1
    y = np.array(["relax", "grip", "pinch"] * 20)
    cal = _fit(X, y, ["relax", "grip", "pinch"], ext, rest_class="relax")
    assert cal.rest == (True, False, False)
    assert cal.speed(np.array([50.0, 50.0]), 0) == 0.0
    assert cal.speed(np.array([50.0, 50.0]), 1) == 1.0
    auto = _fit(X, np.where(y == "relax", "Rest", y), ["Rest", "grip", "pinch"], ext)
    assert auto.rest == (True, False, False)
    with pytest.raises(ValueError, match="rest_class"):
        _fit(X, y, ["relax", "grip", "pinch"], ext, rest_class="sleep")


def test_measure_needs_its_feature_and_percentiles_are_checked():
    ext = FeatureExtractor(("wl", "zc"), n_channels=2, fs=200.0)
    X = np.ones((4, 4))
    with pytest.raises(ValueError, match="needs the per-channel feature 'mav'"):
        _fit(X, ["a", "b", "a", "b"], ["a", "b"], ext)
    ext = FeatureExtractor(("mav", "rms"), n_channels=2, fs=200.0)
    with pytest.raises(ValueError, match="below high_percentile"):
        _fit(X, ["a", "b", "a", "b"], ["a", "b"], ext, low_percentile=70, high_percentile=10)
    with pytest.raises(ValueError, match="one of"):
        _fit(X, ["a", "b", "a", "b"], ["a", "b"], ext, measure="peak")


@pytest.mark.parametrize("measure", ["rms", "log_mav"])
def test_other_measures_match_numpy(measure, rng):
    ext = FeatureExtractor(("mav", "rms"), n_channels=3, fs=200.0)
    X = np.abs(rng.normal(2.0, 1.0, (90, 6))) + 0.01
    y = np.array(["rest", "a", "b"] * 30)
    cal = _fit(X, y, ["rest", "a", "b"], ext, measure=measure, low_percentile=20,
               high_percentile=80)
    col = [1, 3, 5] if measure == "rms" else [0, 2, 4]
    a = X[:, col].sum(axis=1)
    a = np.log(a) if measure == "log_mav" else a
    idx = np.array([0, 1, 2] * 30)
    want = np.zeros(90)
    for k in (1, 2):
        lo, hi = np.percentile(a[idx == k], [20, 80])
        want[idx == k] = np.clip((a[idx == k] - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(cal.speed_batch(X, idx), want, atol=1e-12)


# ---------------------------------------------------------------- known activation level
@pytest.fixture(scope="module")
def ramp_calibrated():
    band = SyntheticArmband(8, FS, seed=3)
    ext = FeatureExtractor(FEATURES, 8, FS)
    emg, lab, lev, s, n = ramp_session(band, range(5), seconds_per_class=6.0, low=0.1, high=1.0)
    X, seg, _ = featurize(emg, FS, ext, 200.0, 50.0, s, n)
    y = np.asarray(band.class_names)[lab[s[seg]]]
    return band, ext, _fit(X, y, band.class_names, ext)


def test_known_activation_level_gives_monotone_calibrated_speed(ramp_calibrated):
    """Holds at a known level: the median speed rises with the level, is 0 below the
    ramp's 10 % point and 1 above its 70 % point, and linear in between."""
    band, ext, cal = ramp_calibrated
    levels = np.round(np.arange(0.1, 1.01, 0.1), 2)
    # Ramp 0.1 -> 1.0 linear in time: its 10 % / 70 % time points are these levels.
    l10, l70 = 0.1 + 0.9 * 0.1, 0.1 + 0.9 * 0.7
    for k in range(1, 5):
        med = []
        for level in levels:
            emg, _, _, s, n = level_session(band, [k], 2.0, lambda i, m: np.full(m, level))
            X, _, _ = featurize(emg, FS, ext, 200.0, 50.0, s, n)
            X = X[4:]  # past the 60 ms activation lag of the class change
            sp = cal.speed_batch(X, np.full(len(X), k))
            assert np.isfinite(sp).all() and (sp >= 0).all() and (sp <= 1).all()
            med.append(float(np.median(sp)))
        med = np.asarray(med)
        assert (np.diff(med) >= -0.02).all(), (k, med)  # monotone (to noise)
        assert med[0] == 0.0 and med[-1] == 1.0, (k, med)
        mid = (levels > l10 + 0.05) & (levels < l70 - 0.05)
        ideal = (levels[mid] - l10) / (l70 - l10)
        np.testing.assert_allclose(med[mid], ideal, atol=0.15, err_msg=f"class {k}")


def test_speed_survives_an_integer_electrode_shift_exactly():
    """Same seed, armband rotated one electrode: z = P x (the ideal map) gives the same speed."""
    ext = FeatureExtractor(FEATURES, 8, FS)
    rec = {}
    for shift in (0, 1):
        band = SyntheticArmband(8, FS, seed=5, shift=shift, noise_level=0.0)
        emg, lab, _, s, n = ramp_session(band, range(5), seconds_per_class=2.0)
        X, seg, _ = featurize(emg, FS, ext, 200.0, 50.0, s, n)
        rec[shift] = X, lab[s[seg]]
    (X0, idx), (X1, _) = rec[0], rec[1]
    names = SyntheticArmband().class_names
    cal = _fit(X0, np.asarray(names)[idx], names, ext)
    # Channel-major features: undoing the rotation is a roll of the channel blocks.
    fpc = ext.features_per_channel
    Z = np.roll(X1.reshape(len(X1), 8, fpc), -1, axis=1).reshape(len(X1), -1)
    np.testing.assert_allclose(Z, X0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cal.speed_batch(Z, idx), cal.speed_batch(X0, idx), atol=1e-6)
    assert np.abs(X1 - X0).max() > 0.1 * np.abs(X0).max()  # the shift did move the features
    # A sum over the ring is itself invariant to a whole-electrode roll, so with the
    # true class even the unmapped features give the same speed; what the shift breaks
    # is the class decision (docs/speed.md), and with it which scaling is used.
    np.testing.assert_allclose(cal.speed_batch(X1, idx), cal.speed_batch(X0, idx), atol=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small_cal(rng):
    ext = FeatureExtractor(("mav", "wl"), n_channels=3, fs=200.0)
    X = np.abs(rng.normal(3.0, 1.0, (60, 6))) + 0.5
    y = np.array(["rest", "a", "b"] * 20)
    return _fit(X, y, ["rest", "a", "b"], ext), X


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_gives_zero_and_flag(small_cal, bad):
    cal, X = small_cal
    z = X[1].copy()
    z[3] = bad
    assert cal.compute(z, 1) == (0.0, BAD_NONFINITE)
    assert cal.speed(z, 1) == 0.0
    Z = X[:5].copy()
    Z[2, 0] = bad
    out = cal.speed_batch(Z, [1, 2, 1, 2, 1])
    assert np.isfinite(out).all() and out[2] == 0.0
    # the raw features can be bad while z is not (x given for the check)
    assert cal.compute(X[1], 1, x=z) == (0.0, BAD_NONFINITE)


def test_classifier_minus_one_gives_zero_and_flag(small_cal):
    cal, X = small_cal
    assert cal.compute(X[1], -1) == (0.0, BAD_NONFINITE)


def test_silent_channel_gives_zero_and_flag(small_cal):
    cal, X = small_cal
    z = X[1] * 10.0  # strong: full speed if the channels were alive
    assert cal.compute(z, 1) == (1.0, None)
    z[2] = 0.0  # channel 1's MAV: a flat, disconnected electrode
    assert cal.compute(z, 1) == (0.0, BAD_SILENT)
    assert cal.speed_batch(z[None, :], [1])[0] == 0.0
    # a silent channel among the raw features is found even if z looks fine
    x = X[1].copy()
    x[0] = 0.0
    assert cal.compute(X[1] * 10.0, 1, x=x) == (0.0, BAD_SILENT)


def test_real_flat_channel_window_is_flagged_by_the_extractor_features(emg_dir):
    ext = FeatureExtractor(FEATURES, n_channels=8, fs=200.0)
    d = load_ciil_features(emg_dir / "ciil_es_s01_baseline.npz", ext, 200.0, 50.0)
    names = d["class_names"]
    cal = _fit(d["X"], np.asarray(names)[d["y"]], names, ext)
    with np.load(emg_dir / "ciil_es_s01_baseline.npz", allow_pickle=False) as z:
        w = z["emg"][z["seg_start"][0]:z["seg_start"][0] + 40].astype(np.float64)
    w[:, 5] = 0.0
    assert cal.compute(ext.transform(w), 0) == (0.0, BAD_SILENT)


# ---------------------------------------------------------------- persistence
def test_to_dict_from_dict_round_trip_through_json(small_cal):
    cal, X = small_cal
    d = json.loads(json.dumps(cal.to_dict()))
    back = SpeedCalibration.from_dict(d)
    assert back == cal
    idx = np.array([0, 1, 2] * 20)
    np.testing.assert_array_equal(back.speed_batch(X, idx), cal.speed_batch(X, idx))


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.update(format="x"), "format"),
    (lambda d: d.pop("low"), "missing"),
    (lambda d: d.update(extra=1), "unknown"),
    (lambda d: d.update(low=[0.0]), "entries"),
    (lambda d: d.update(high=[float("nan")] * 3), "non-finite"),
    (lambda d: d.update(high=list(d["low"])), "low < high"),
    (lambda d: d.update(measure="peak"), "measure"),
])
def test_from_dict_rejects_bad_input_with_a_clear_message(small_cal, edit, msg):
    d = small_cal[0].to_dict()
    edit(d)
    with pytest.raises(ValueError, match=msg):
        SpeedCalibration.from_dict(d)


def test_calibrate_bundle_speed_is_stored_in_bundle_meta(tmp_path, emg_dir):
    from emtl_stream.daemon.bundle import SourceBundle, fit_source_model, make_bundle

    ext = FeatureExtractor(FEATURES, n_channels=8, fs=200.0)
    d = load_ciil_features(emg_dir / "ciil_es_s02_baseline.npz", ext, 200.0, 50.0)
    y = np.asarray(d["class_names"])[d["y"]]
    bundle = make_bundle(fit_source_model(d["X"], y), ext, 200.0, 50.0, 8, 200.0)
    bundle.meta["speed"] = calibrate_bundle_speed(bundle, d["X"], y)
    back = SourceBundle.load(bundle.save(tmp_path / "m.npz"))
    cal = SpeedCalibration.from_dict(back.meta["speed"])
    assert cal == _fit(d["X"], y, bundle.classes, ext)
    assert cal.classes == tuple(bundle.classes)


# ---------------------------------------------------------------- smoothing
def test_smoother_step_response_has_at_most_one_window_of_delay():
    sm = SpeedSmoother(deadband=0.0, smoothing="mean2")
    out = [sm.update(v, 1) for v in [0.0] * 3 + [1.0] * 4]
    assert out == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert [SpeedSmoother(0.0, "none").update(v, 1) for v in (0.0, 1.0)] == [0.0, 1.0]


def test_smoother_restarts_on_class_change_and_bad_input():
    sm = SpeedSmoother(deadband=0.0)
    assert sm.update(0.8, 1) == 0.8
    assert sm.update(0.2, 2) == 0.2  # a new movement does not inherit the old speed
    assert sm.update(0.6, 2) == pytest.approx(0.4)
    assert sm.update(0.9, 2, bad=True) == 0.0
    assert sm.update(0.6, 2) == 0.6
    assert sm.update(float("nan"), 2) == 0.0


def test_smoother_deadband_matches_closed_form(rng):
    d = 0.1
    sm = SpeedSmoother(deadband=d, smoothing="none")
    x = rng.uniform(0, 1, 200)
    got = np.array([sm.update(v, 1) for v in x])
    want = np.where(x < d, 0.0, (x - d) / (1 - d))
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert sm.update(1.0, 1) == 1.0
    with pytest.raises(ValueError, match="below 1"):
        SpeedSmoother(deadband=1.0)
    with pytest.raises(ValueError, match="smoothing"):
        SpeedSmoother(smoothing="kalman")


# ---------------------------------------------------------------- config
def test_speed_config_bounds_and_fit_kwargs(tmp_path):
    from emtl_stream.config import load_config
    from emtl_stream.errors import ConfigError
    from emtl_stream.model.speed import speed_kwargs

    p = tmp_path / "c.toml"
    p.write_text('[speed]\nmeasure = "rms"\nlow_percentile = 5\nhigh_percentile = 90.0\n')
    assert speed_kwargs(load_config(p, env={})) == dict(measure="rms", low_percentile=5.0,
                                                        high_percentile=90.0)
    for text, key in [("low_percentile = 80.0\nhigh_percentile = 20.0", "speed.low_percentile"),
                      ("deadband = 1.0", "speed.deadband"), ('measure = "peak"', "speed.measure"),
                      ('smoothing = "kalman"', "speed.smoothing")]:
        p.write_text(f"[speed]\n{text}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(p, env={})


# ---------------------------------------------------------------- live loop
def test_live_speed_smooths_flags_and_holds_still_when_rejected(small_cal):
    from emtl_stream.config import SpeedConfig
    from emtl_stream.model.speed import LiveSpeed

    cal, X = small_cal
    live = LiveSpeed(cal.to_dict(), SpeedConfig(deadband=0.0))
    z = np.full_like(X[1], cal.high[1] / 3)  # summed MAV (3 channels) = class a's high
    weak = X[1].copy()
    raw = [cal.speed(v, 1) for v in (weak, z)]
    assert raw[1] == 1.0 and raw[0] < 1.0
    assert live.update(weak, weak, 1) == (raw[0], None)
    assert live.update(z, z, 1) == (pytest.approx((raw[0] + 1.0) / 2), None)
    assert live.update(z, z, 1) == (1.0, None)
    assert live.update(z, z, 1, rejected=True) == (0.0, None)
    bad = z.copy()
    bad[0] = np.nan
    assert live.update(bad, z, 1) == (0.0, BAD_NONFINITE)
    # amplitude="raw": the class from z, the amplitude from the raw electrodes
    raw_live = LiveSpeed(cal, SpeedConfig(deadband=0.0, smoothing="none", amplitude="raw"))
    assert raw_live.update(z, weak, 1) == (raw[0], None)


def test_live_speed_on_the_streaming_pipeline_equals_the_offline_speed(ramp_calibrated):
    """Chunks through FeaturePipeline + LiveSpeed == whole-recording features + speed_batch."""
    from emtl_stream.config import SpeedConfig
    from emtl_stream.model.speed import LiveSpeed
    from emtl_stream.pipeline.features import FeaturePipeline

    band, ext, cal = ramp_calibrated
    emg, lab, _, _, _ = ramp_session(band, [0, 2, 3], seconds_per_class=1.5)
    X, _, _ = featurize(emg, FS, ext, 200.0, 50.0)  # one segment: windows as live
    stops = np.arange(len(X)) * 50 + 200
    idx = lab[stops - 1]
    want = cal.speed_batch(X, idx)
    pipe = FeaturePipeline(ext, 200.0, 50.0)
    live = LiveSpeed(cal, SpeedConfig(deadband=0.0, smoothing="none"))
    got = []
    for a in range(0, len(emg), 37):  # odd chunk size: windows straddle chunks
        for w in pipe.push(emg[a:a + 37], np.arange(a, min(a + 37, len(emg))) / FS):
            got.append(live.update(w.x, w.x, int(lab[w.stop - 1]))[0])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert 0.0 < np.mean(want) < 1.0
