"""The offline evaluation, checked against an independent numpy/scikit-learn computation."""

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from emtl_stream.daemon.calibration import PromptSchedule
from emtl_stream.evaluate import (EvalSettings, burst_rows, evaluate_dir, evaluate_subject,
                                  to_markdown)

WIN, STEP = 40, 10  # 200 ms / 50 ms at 200 Hz


def _hudgins(w):
    d = np.diff(w, axis=0)
    feats = [np.abs(w).mean(0), np.abs(d).sum(0), (w[:-1] * w[1:] < 0).sum(0),
             (d[:-1] * d[1:] < 0).sum(0)]
    return np.stack(feats, 1).ravel()  # channel-major


def _naive_windows(path):
    z = np.load(path, allow_pickle=False)
    emg = z["emg"].astype(float)
    X, y, rep, off = [], [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        for a in range(0, n - WIN + 1, STEP):
            X.append(_hudgins(emg[s + a:s + a + WIN]))
            y.append(c)
            rep.append(r)
            off.append((a + WIN) / 200.0)
    return np.array(X), np.array(y), np.array(rep), np.array(off)


@pytest.fixture(scope="module")
def subject5(emg_dir):
    b, s = emg_dir / "ciil_es_s05_baseline.npz", emg_dir / "ciil_es_s05_shifted.npz"
    settings = EvalSettings(feature_names=("mav", "wl", "zc", "ssc"))
    return b, s, evaluate_subject(b, s, settings)


def test_within_and_no_adaptation_match_independent_lda(subject5):
    b, s, row = subject5
    Xb, yb, rb, _ = _naive_windows(b)
    Xs, ys, rs, _ = _naive_windows(s)
    lda = LinearDiscriminantAnalysis().fit(Xb[rb <= 2], yb[rb <= 2])
    assert row["within"] == pytest.approx(lda.score(Xb[rb >= 3], yb[rb >= 3]), abs=0.01)
    assert row["no_adapt"] == pytest.approx(lda.score(Xs[rs >= 2], ys[rs >= 2]), abs=0.01)


def test_shrinkage_lda_uses_exactly_the_first_seconds_of_rep_0(subject5):
    b, s, row = subject5
    Xs, ys, rs, off = _naive_windows(s)
    test = rs >= 2
    for T in (0.25, 0.5, 1.0):
        cal = (rs == 0) & (off <= T + 1e-9)
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Xs[cal], ys[cal])
        assert row[f"slda@{T:g}"] == pytest.approx(ref.score(Xs[test], ys[test]), abs=1e-9)


@pytest.mark.parametrize("lead_in", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("seconds", [0.5, 1.0])
def test_burst_rows_are_the_windows_a_prompted_burst_records(lead_in, seconds):
    # Window ends every 50 ms over one class segment, as ciil_features yields them.
    off = (np.arange(WIN, 600 + 1, STEP)) / 200.0
    sched = PromptSchedule(["open"], seconds, repetitions=1, lead_in_s=lead_in, rest_s=0.0)
    want = np.array([sched.label_for_window(t, WIN / 200.0) == "open" for t in off])
    got = burst_rows(off, seconds, WIN / 200.0, lead_in)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == round((seconds - WIN / 200.0) / (STEP / 200.0)) + 1
    if lead_in == 0.0:  # the published protocol: the first `seconds` of every class
        np.testing.assert_array_equal(got, off <= seconds + 1e-9)


def test_a_lead_in_moves_the_burst_past_the_onset(emg_dir):
    b, s = emg_dir / "ciil_es_s05_baseline.npz", emg_dir / "ciil_es_s05_shifted.npz"
    row = evaluate_subject(b, s, EvalSettings(feature_names=("mav", "wl", "zc", "ssc"),
                                              lead_in_s=0.5))
    Xs, ys, rs, off = _naive_windows(s)
    test = rs >= 2
    for T in (0.5, 1.0):
        cal = (rs == 0) & (off - WIN / 200.0 >= 0.5 - 1e-9) & (off <= 0.5 + T + 1e-9)
        ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Xs[cal], ys[cal])
        assert row[f"slda@{T:g}"] == pytest.approx(ref.score(Xs[test], ys[test]), abs=1e-9)


def test_transfer_recovers_most_of_the_shift_loss(subject5):
    _, _, row = subject5
    # Subject 5 loses most of its accuracy to the shift (0.93 -> 0.15, data README).
    assert row["no_adapt"] < 0.3
    for T in (0.5, 1.0, 2.0):
        assert row[f"transfer@{T:g}"] > row["no_adapt"] + 0.5
        assert row[f"transfer3@{T:g}"] > row["no_adapt"] + 0.4
    assert row["roll@1"] is not None


def test_evaluate_dir_averages_and_renders(emg_dir):
    settings = EvalSettings(feature_names=("mav", "wl", "zc", "ssc"))
    result = evaluate_dir(emg_dir, settings, subjects={0, 5})
    assert sorted(result["subjects"]) == [0, 5]
    for key, mean in result["mean"].items():
        assert mean == pytest.approx(np.mean([r[key] for r in result["subjects"].values()]))
    table = to_markdown(result)
    assert table.count("\n| ") >= 3 and "**mean**" in table
    assert "the first T s of every class" in table  # the protocol is named with the table
    result["settings"]["lead_in_s"] = 0.5
    assert "after a 0.5 s lead-in" in to_markdown(result)


def test_evaluate_dir_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ciil_es"):
        evaluate_dir(tmp_path)


@pytest.mark.parametrize("ring", ["true", "false"])
@pytest.mark.parametrize("ring_search", ["true", "false"])
@pytest.mark.parametrize("rotation", ["roll", "continuous"])
def test_evaluate_and_the_daemon_derive_the_same_transfer_settings(ring, ring_search, rotation,
                                                                  monkeypatch):
    """One config: the evaluation, a recalibration and the warm-up run one roll-search policy."""
    from emtl_stream.config import load_config
    from emtl_stream.daemon import jobs, warmup

    env = {"EMTL_STREAM_RING": ring, "EMTL_TRANSFER_RING_SEARCH": ring_search,
           "EMTL_TRANSFER_ROTATION_SEARCH": rotation, "EMTL_TRANSFER_REG": "0.25",
           "EMTL_TRANSFER_SHRINK_TO": "current"}
    cfg = load_config(None, env=env)
    on = ring == "true" and ring_search == "true"  # the documented rule, written out
    H = np.eye(32)  # 8 channels x 4 features
    daemon_kw, daemon_ring = jobs.transfer_settings(cfg, 8, H)
    ev = EvalSettings.from_config(cfg)
    assert ev.ring_channels == daemon_ring == (8 if on else None)
    assert ev.transfer["structure"] == daemon_kw["structure"] == ("channel" if on else "dense")
    assert ev.transfer.get("rotation_search") == daemon_kw.get("rotation_search") == (
        "continuous" if on and rotation == "continuous" else None)
    # the one difference: offline there is no live map to shrink towards
    np.testing.assert_array_equal(daemon_kw.pop("shrink_to"), H)
    assert ev.transfer.pop("shrink_to") == "identity"
    assert ev.transfer == daemon_kw and daemon_kw["reg"] == 0.25
    seen = {}
    monkeypatch.setattr(warmup, "warm_up", lambda *a, **kw: seen.setdefault("args", a))
    warmup.warm_up_for(cfg)
    assert seen["args"][-1] is on and seen["args"][-2]["structure"] == ev.transfer["structure"]


def test_no_roll_search_when_the_features_are_not_whole_channel_blocks():
    from emtl_stream.config import load_config
    from emtl_stream.daemon import jobs

    kw, ring = jobs.transfer_settings(load_config(None, env={}), 8, np.eye(30))
    assert ring is None and kw["structure"] == "dense"


def test_rotation_grid_rows_on_one_subject(emg_dir):
    """No rotation is the within-session test itself; a whole-electrode rotation is
    recovered by the burst and by the daemon's guarded zero-label path."""
    from emtl_stream.config import load_config
    from emtl_stream.eval_rotations import RotationGrid, evaluate_subject_rotations

    settings = EvalSettings.from_config(load_config(None, env={}))
    grid = RotationGrid(rotations=(0.0, 1.0), gains=(1.0,), reference=False, settings=settings)
    out = evaluate_subject_rotations(emg_dir / "ciil_es_s05_baseline.npz", grid)
    still, turned = out[(0.0, 1.0)], out[(1.0, 1.0)]
    assert still["no_adapt"] == pytest.approx(out["within"], abs=1e-12)
    assert turned["no_adapt"] < out["within"] - 0.3
    assert turned["transfer"] > turned["no_adapt"] + 0.3
    assert turned["zero_label_guarded"] > turned["no_adapt"] + 0.3  # the guard accepts a roll
