"""Feature kernels against the plain-numpy/scipy twins in tests/naive/features.py."""

import numpy as np
import pytest

from emtl_stream.kernels import features as K
from emtl_stream.pipeline.features import FEATURE_NAMES, BadWindow, FeatureExtractor
from naive import features as naive

KW = dict(zc_thr=3.0, ssc_thr=2.0, wamp_thr=5.0, fs=200.0, eps=1e-8, ar_order=4)


def _extractor(names, n_channels, **over):
    kw = {**KW, **over}
    return FeatureExtractor(names, n_channels, kw["fs"], zc_threshold=kw["zc_thr"],
                            ssc_threshold=kw["ssc_thr"], wamp_threshold=kw["wamp_thr"],
                            ar_order=kw["ar_order"], log_eps=kw["eps"])


def _emg_like(rng, n, ch):
    # Myo-like: integer counts with a channel-dependent amplitude, so thresholds matter
    # and exact zeros occur (zc/ssc/wamp edge cases).
    return np.round(rng.normal(size=(n, ch)) * rng.uniform(1, 30, size=ch))


def test_named_codes_are_the_positions_in_the_one_name_table():
    from emtl_stream.kernels import feature_codes

    assert FEATURE_NAMES is feature_codes.FEATURE_CODES is K.FEATURE_CODES
    named = {k: v for k, v in vars(feature_codes).items() if k.startswith("CODE_")}
    assert sorted(named.values()) == list(range(len(FEATURE_NAMES)))
    for name, code in named.items():
        assert FEATURE_NAMES[code] == name[len("CODE_"):].lower()


def _kernel_args(names):
    """codes and params built from the documented layout, not through the extractor."""
    codes = np.array([FEATURE_NAMES.index(n) for n in names], dtype=np.int64)
    params = np.empty(K.N_PARAMS)
    params[[K.P_ZC, K.P_SSC, K.P_WAMP, K.P_FS, K.P_EPS, K.P_AR_ORDER]] = [
        KW["zc_thr"], KW["ssc_thr"], KW["wamp_thr"], KW["fs"], KW["eps"], KW["ar_order"]]
    return codes, params


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_batch_features_kernel_matches_naive_twin_with_bad_samples(value, rng):
    n_win, n, ch = 9, 40, 3
    W = _emg_like(rng, n_win * n, ch).reshape(n_win, n, ch)
    bad = {1: (0, 0), 4: (n // 2, 1), 8: (n - 1, 2)}  # sample at start, middle, end
    for w, (i, c) in bad.items():
        W[w, i, c] = value
    codes, params = _kernel_args(FEATURE_NAMES)
    fpc = K.features_per_channel(codes, KW["ar_order"])
    assert fpc == len(FEATURE_NAMES) - 1 + KW["ar_order"]
    out = np.zeros((n_win, ch * fpc))
    finite = np.ones(n_win, dtype=bool)
    K.batch_features(W, codes, params, out, finite)
    for w in range(n_win):
        expected = naive.window_features(W[w], FEATURE_NAMES, **KW)
        if w in bad:
            assert expected is None and not finite[w] and np.isnan(out[w]).all()
        else:
            assert finite[w]
            np.testing.assert_allclose(out[w], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", FEATURE_NAMES)
@pytest.mark.parametrize("n_samples,n_channels", [(8, 1), (40, 1), (41, 64), (101, 3)])
def test_each_feature_matches_naive_twin(name, n_samples, n_channels, rng):
    ext = _extractor((name,), n_channels)
    for data in (_emg_like(rng, n_samples, n_channels), rng.normal(size=(n_samples, n_channels))):
        expected = naive.window_features(data, (name,), **KW)
        got = ext.transform(data)
        assert got.shape == (ext.n_features,)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_channels", [1, 8, 64])
def test_all_features_together_channel_major(n_channels, rng):
    ext = _extractor(FEATURE_NAMES, n_channels)
    data = _emg_like(rng, 40, n_channels)
    expected = naive.window_features(data, FEATURE_NAMES, **KW)
    np.testing.assert_allclose(ext.transform(data), expected, rtol=1e-9, atol=1e-9)
    out = np.full(ext.n_features, np.nan)
    assert ext.transform_into(np.ascontiguousarray(data, dtype=np.float64), out)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)
    assert ext.features_per_channel == len(FEATURE_NAMES) - 1 + 4
    assert ext.feature_names[0] == "ch0_mav"
    if n_channels > 1:
        assert ext.feature_names[ext.features_per_channel] == "ch1_mav"
    assert [n for n in ext.feature_names if n.startswith("ch0_ar")] == [
        "ch0_ar1", "ch0_ar2", "ch0_ar3", "ch0_ar4"]


def test_batch_equals_single_and_flags_bad_windows(rng):
    ext = _extractor(FEATURE_NAMES, 8)
    W = _emg_like(rng, 12 * 40, 8).reshape(12, 40, 8)
    W[3, 0, 2] = np.nan
    W[7, 39, 0] = np.inf
    W[9, 20, 5] = -np.inf
    X, finite = ext.transform_batch(W)
    np.testing.assert_array_equal(finite, [i not in (3, 7, 9) for i in range(12)])
    assert np.isnan(X[[3, 7, 9]]).all()
    for i in np.flatnonzero(finite):
        np.testing.assert_allclose(X[i], naive.window_features(W[i], FEATURE_NAMES, **KW),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(X[i], ext.transform(W[i]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_sample_is_flagged_not_passed_on(where, value, rng):
    ext = _extractor(FEATURE_NAMES, 4)
    data = _emg_like(rng, 40, 4)
    i = {"start": 0, "middle": 20, "end": 39}[where]
    data[i, 1] = value
    assert naive.window_features(data, FEATURE_NAMES, **KW) is None
    out = np.zeros(ext.n_features)
    assert not K.window_features(data, *_kernel_args(FEATURE_NAMES), out)
    assert np.isnan(out).all()
    out[:] = 0.0
    assert not ext.transform_into(data, out)
    assert np.isnan(out).all()
    with pytest.raises(BadWindow, match="NaN or inf"):
        ext.transform(data)
    with pytest.raises(ValueError):  # BadWindow is a ValueError
        ext.transform(data)
    X, finite = ext.transform_batch(data[None])
    assert not finite[0] and np.isnan(X).all()


def test_constant_and_zero_windows_give_finite_defined_values():
    ext = _extractor(FEATURE_NAMES, 2)
    data = np.zeros((40, 2))
    data[:, 1] = 7.0
    x = ext.transform(data).reshape(2, -1)
    names = ext.feature_names[: ext.features_per_channel]
    assert np.isfinite(x).all()
    v = dict(zip([n[4:] for n in names], x[1]))
    assert v["mav"] == 7.0 and v["wl"] == 0.0 and v["zc"] == 0 and v["ssc"] == 0
    assert v["hjorth_mobility"] == 0 and v["hjorth_complexity"] == 0
    assert v["ar1"] == 0 and v["mnf"] == 0 and v["mdf"] == 0
    assert v["log_wl"] == pytest.approx(np.log(1e-8))


def test_ar_recovers_a_known_process_and_agrees_with_least_squares(rng):
    # Yule-Walker (the kernel's estimator) and ordinary least squares are different
    # estimators; on a long stationary AR(4) both approach the true coefficients.
    true = np.array([0.5, -0.3, 0.2, -0.1])
    n = 20000
    e = rng.normal(size=n + 200)
    x = np.zeros(n + 200)
    for t in range(4, n + 200):
        x[t] = true @ x[t - 4:t][::-1] + e[t]
    x = x[200:]
    ext = _extractor(("ar",), 1)
    got = ext.transform(x[:, None])
    np.testing.assert_allclose(got, naive.ar_yule_walker(x, 4), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got, naive.ar_least_squares(x, 4), atol=5e-3)
    np.testing.assert_allclose(got, true, atol=0.03)


@pytest.mark.parametrize("n", [40, 41, 128])
def test_mnf_mdf_of_a_sine_on_a_bin_is_its_frequency(n):
    fs = 200.0
    k = 7
    f0 = k * fs / n
    t = np.arange(n) / fs
    x = np.sin(2 * np.pi * f0 * t + 0.3)[:, None]
    got = _extractor(("mnf", "mdf"), 1).transform(x)
    np.testing.assert_allclose(got, [f0, f0], rtol=1e-9)


def test_hudgins_features_on_shared_data_match_readme_formula(emg_dir):
    # The data README's loading example: MAV = mean |w|, WL = sum |diff w| per channel.
    with np.load(emg_dir / "ciil_es_s02_shifted.npz", allow_pickle=False) as z:
        emg, starts, lens = z["emg"], z["seg_start"], z["seg_len"]
    ext = FeatureExtractor(("mav", "wl", "zc", "ssc"), 8, 200.0)
    checked = 0
    for s, n in list(zip(starts, lens))[:6]:
        seg = emg[s:s + n]
        for a in range(0, n - 40 + 1, 10):
            w = seg[a:a + 40]
            x = ext.transform(w).reshape(8, 4)
            np.testing.assert_allclose(x[:, :2].T.ravel(), naive.mav_wl(w), rtol=1e-6)
            np.testing.assert_allclose(x.ravel(), naive.hudgins(w), rtol=1e-12)
            np.testing.assert_allclose(
                x.ravel(), naive.window_features(w.astype(float), ext.names, zc_thr=0.0,
                                                 ssc_thr=0.0), rtol=1e-12)
            checked += 1
    assert checked > 300


def test_extractor_config_round_trip_and_errors():
    import json

    ext = FeatureExtractor(("mav", "ar", "log_wl"), 16, 1000.0, zc_threshold=0.5, ar_order=6)
    d = json.loads(json.dumps(ext.to_dict()))
    back = FeatureExtractor.from_dict(d)
    assert back == ext and back.n_features == 16 * 8
    with pytest.raises(ValueError, match="unknown feature 'mvp'"):
        FeatureExtractor(("mvp",))
    with pytest.raises(ValueError, match="twice"):
        FeatureExtractor(("mav", "mav"))
    with pytest.raises(ValueError, match="unknown feature-extractor keys"):
        FeatureExtractor.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="at least 7 samples"):
        FeatureExtractor(("ar",), 1, ar_order=6).transform(np.ones((5, 1)))
    from emtl_stream.errors import ChannelMismatch

    with pytest.raises(ChannelMismatch, match="3 channels"):
        FeatureExtractor(n_channels=8).transform(np.ones((40, 3)))
