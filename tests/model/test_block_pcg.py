"""Block-Jacobi preconditioned CG of the channel-structured shared M-step."""

import numpy as np
import pytest

from emtl_stream.model import _transfer_mstep as ms
from emtl_stream.model.transfer import TransferEM, channel_mask, ring_roll_matrix
from sources import make_source


@pytest.mark.parametrize("structure", ["channel", "mask"])
@pytest.mark.parametrize("labelled", [True, False])
def test_block_cg_equals_the_dense_masked_solve(rng, monkeypatch, structure, labelled):
    C, f, L = 6, 3, 4
    n = C * f
    src = make_source(rng, n, L, 1, True, sep=2.0)
    comp = rng.integers(0, L, 50)
    X = (src.means[comp] + 0.7 * rng.normal(size=(50, n))) @ ring_roll_matrix(n, C, 1)
    y = comp if labelled else None
    calls = []
    orig = ms.block_pcg

    def spy(*a):
        calls.append(1)
        return orig(*a)

    monkeypatch.setattr(ms, "block_pcg", spy)
    kw = (dict(structure="channel", ring_channels=C) if structure == "channel"
          else dict(structure=channel_mask(n, C)))
    dense = TransferEM(src, reg=0.1, solver="dense", **kw).fit(X, y)
    assert not calls
    # a tight CG tolerance: this compares the solvers, not the default precision
    cg = TransferEM(src, reg=0.1, solver="cg", tol=1e-9, cg_rtol=1e-10, **kw).fit(X, y)
    assert calls  # the block-preconditioned path ran
    np.testing.assert_allclose(cg.H_, dense.H_, atol=1e-7 * np.abs(dense.H_).max())
    np.testing.assert_allclose(cg.log_likelihood_[-1], dense.log_likelihood_[-1], rtol=1e-9)


def test_block_cg_is_not_used_with_an_offset(rng, monkeypatch):
    C, f = 4, 2
    src = make_source(rng, C * f, 3, 1, True)
    calls = []
    monkeypatch.setattr(ms, "block_pcg", lambda *a: calls.append(1))
    X = rng.normal(size=(30, C * f))
    TransferEM(src, reg=0.1, solver="cg", bias=True, structure="channel",
               ring_channels=C).fit(X, np.arange(30) % 3)
    assert not calls
