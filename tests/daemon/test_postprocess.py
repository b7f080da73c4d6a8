"""Post-processing: rejection and majority voting, against a plain-Python twin."""

import collections

import numpy as np
import pytest

from emtl_stream.daemon.postprocess import PostProcessor


def _twin(indices, probas, reject_below, vote_windows):
    """Independent reference: skip invalid windows, vote over the last valid ones."""
    out, hist = [], []
    for i, p in zip(indices, probas):
        if i < 0 or not np.isfinite(p[i]) or not abs(np.sum(p) - 1) <= 1e-6:
            out.append(None)
            continue
        hist.append(i)
        last = hist[-vote_windows:]
        counts = collections.Counter(last)
        best = max(counts.values())
        voted = next(c for c in last if counts[c] == best)  # first seen among the tied
        out.append((len([o for o in out if o is not None]) + 1, voted, float(p[i]),
                    float(p[i]) < reject_below))
    return out


@pytest.mark.parametrize("vote_windows", [1, 3, 5])
def test_matches_twin(vote_windows):
    rng = np.random.default_rng(vote_windows)
    n, L = 300, 4
    probas = rng.dirichlet(np.ones(L), size=n)
    indices = probas.argmax(axis=1)
    bad = rng.random(n) < 0.1
    indices[bad] = -1
    probas[rng.random(n) < 0.05] = np.nan
    pp = PostProcessor(reject_below=0.4, vote_windows=vote_windows)
    got = []
    for i, p in zip(indices, probas):
        d = pp.process(int(i), p)
        got.append(None if d is None else (d.seq, d.index, d.confidence, d.rejected))
    assert got == _twin(indices, probas, 0.4, vote_windows)


def test_invalid_window_consumes_no_seq_and_no_vote():
    pp = PostProcessor(vote_windows=3)
    p = np.array([0.7, 0.3])
    assert pp.process(0, p).seq == 1
    assert pp.process(-1, np.array([np.nan, np.nan])) is None
    assert pp.process(1, np.array([0.2, np.nan])) is None  # non-finite confidence
    assert list(pp.votes) == [0]
    d = pp.process(1, np.array([0.1, 0.9]))
    assert d.seq == 2 and -1 not in pp.votes


def test_rejection_threshold_and_reset():
    pp = PostProcessor(reject_below=0.5, vote_windows=2)
    assert pp.process(0, np.array([0.49, 0.51])).rejected
    assert not pp.process(1, np.array([0.2, 0.8])).rejected
    pp.reset_votes()
    assert len(pp.votes) == 0 and pp.seq == 2


def test_a_posterior_that_does_not_sum_to_one_is_dropped():
    pp = PostProcessor()
    assert pp.process(0, np.ones(5)) is None  # [1, 1, 1, 1, 1]: an absurd input's "posterior"
    assert pp.process(0, np.array([0.6, np.nan])) is None
    assert pp.process(0, np.array([0.6, 0.4])).seq == 1
