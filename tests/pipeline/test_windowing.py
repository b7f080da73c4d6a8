"""Windower: every window exactly once, none across a restart, chunking-invariant."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emtl_stream.pipeline.features import FeatureExtractor, FeaturePipeline
from emtl_stream.pipeline.offline import featurize
from emtl_stream.pipeline.windowing import Windower, ms_to_samples
from emtl_stream.sim.replay import Replayer
from emtl_stream.sim.synthetic import SyntheticArmband


def _all_windows(n_total, window, step):
    return [(a, a + window) for a in range(0, n_total - window + 1, step)]


@settings(max_examples=80, deadline=None)
@given(window=st.integers(1, 30), step=st.integers(1, 40),
       chunks=st.lists(st.integers(0, 60), max_size=30))
def test_random_chunking_equals_one_big_push(window, step, chunks):
    w = Windower(window, step)
    got = []
    n = 0
    for c in chunks:
        n += c
        got += w.ready(n)
    once = Windower(window, step).ready(n)
    assert got == once == _all_windows(n, window, step)
    assert len(set(got)) == len(got)


def test_ready_twice_emits_nothing_new():
    w = Windower(4, 2)
    assert w.ready(8) == [(0, 4), (2, 6), (4, 8)]
    assert w.ready(8) == []
    assert w.ready(9) == []
    assert w.ready(10) == [(6, 10)]


@settings(max_examples=60, deadline=None)
@given(window=st.integers(1, 20), step=st.integers(1, 25),
       pieces=st.lists(st.integers(0, 80), min_size=1, max_size=8))
def test_no_window_straddles_a_restart(window, step, pieces):
    w = Windower(window, step)
    n = 0
    gaps = []
    got = []
    for i, p in enumerate(pieces):
        if i:
            w.restart(n)
            gaps.append(n)
        n += p
        got += w.ready(n)
    assert len(set(got)) == len(got)
    for a, b in got:
        assert b - a == window
        assert not any(a < g < b for g in gaps)
    # exactly the windows an independent per-piece cut gives
    expected, s = [], 0
    for p in pieces:
        expected += [(s + a, s + b) for a, b in _all_windows(p, window, step)]
        s += p
    assert got == expected


@pytest.mark.parametrize("fs", [100.0, 128.0, 200.0, 250.0, 256.0, 500.0, 512.0, 1000.0,
                                1024.0, 2000.0, 2048.0, 4096.0])
def test_ms_to_samples_rounds_like_exact_arithmetic_halves_to_even(fs):
    # independent twin: the exact rational ms * fs / 1000, rounded half to even
    for tenth_ms in range(1, 5001):
        exact = Fraction(tenth_ms, 10) * Fraction(fs) / 1000
        want = round(exact)
        if want < 1:
            with pytest.raises(ValueError, match="less than one sample"):
                ms_to_samples(tenth_ms / 10, fs)
        else:
            assert ms_to_samples(tenth_ms / 10, fs) == want, (tenth_ms / 10, fs)


def test_ms_to_samples_half_cases_and_callers_agree():
    assert [ms_to_samples(ms, 200.0) for ms in (7.5, 12.5, 17.5, 22.5)] == [2, 2, 4, 4]
    extractor = FeatureExtractor(("mav",), n_channels=2, fs=200.0)
    pipe = FeaturePipeline(extractor, 22.5, 17.5)  # 4.5 and 3.5 samples
    assert (pipe.window, pipe.step) == (4, 4)
    # the offline featuriser cuts the same windows: starts 0, 4, 8 while 4 samples fit
    X, _, offset = featurize(np.ones((13, 2)), 200.0, extractor, 22.5, 17.5)
    np.testing.assert_array_equal(offset, [0, 4, 8])
    assert len(X) == 3
    # the replayer's chunks (constructing it opens no outlet)
    assert Replayer(SyntheticArmband(2, 200.0), chunk_ms=12.5).chunk == 2
    assert Replayer(SyntheticArmband(2, 200.0), chunk_ms=17.5).chunk == 4


def test_ms_to_samples():
    assert ms_to_samples(200, 200.0) == 40
    assert ms_to_samples(50, 200.0) == 10
    assert ms_to_samples(150, 2048.0) == 307
    with pytest.raises(ValueError, match="less than one sample"):
        ms_to_samples(1, 200.0)
    with pytest.raises(ValueError, match="window_ms must be > 0"):
        ms_to_samples(0, 200.0)
    with pytest.raises(ValueError, match="step must be >= 1"):
        Windower(3, 0)
