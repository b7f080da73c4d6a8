"""Transfer-EM kernels against their plain-numpy twins (tests/naive/transfer.py)."""

import numpy as np
import pytest

from emtl_stream.kernels import estep, linalg, mstep
from naive import transfer as nv

SPECIAL = [np.nan, np.inf, -np.inf]


def _spd(rng, n, shift=1.0):
    A = rng.normal(size=(n, n))
    return A @ A.T / n + shift * np.eye(n)


def _crisp_base(rng, N, K):
    base = rng.normal(size=(N, K))
    base[rng.random((N, K)) < 0.4] = -np.inf
    base[:, 0] = rng.normal(size=N)  # every row keeps one finite entry
    return np.ascontiguousarray(base)


@pytest.mark.parametrize("v", [
    [0.0, 1.0, 2.0], [-1000.0, -1001.0], [800.0, 799.0, -np.inf], [-np.inf, -np.inf],
    [1.0, np.nan, 2.0], [np.inf, 1.0], [3.0],
])
def test_logsumexp_row(v):
    got = linalg.logsumexp_row(np.array(v, float))
    want = nv.logsumexp_row(v)
    np.testing.assert_equal(np.isnan(got), np.isnan(want))
    if not np.isnan(want):
        assert got == pytest.approx(want, rel=1e-13, abs=1e-13)


def test_cholesky_solve_and_inverse(rng):
    A = _spd(rng, 7)
    L = linalg.cholesky_lower(A)
    np.testing.assert_allclose(L, np.linalg.cholesky(A), rtol=1e-12, atol=1e-12)
    B = rng.normal(size=(7, 3))
    X = B.copy()
    linalg.cho_solve_inplace(L, X)
    np.testing.assert_allclose(X, np.linalg.solve(A, B), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(linalg.spd_inverse(A), np.linalg.inv(A), rtol=1e-10, atol=1e-12)


def test_cholesky_of_indefinite_matrix_is_nan():
    A = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert np.isnan(linalg.cholesky_lower(A)[-1, -1])
    assert np.isnan(linalg.spd_inverse(A)).all()


@pytest.mark.parametrize("where", [None, 0, 5, 9])
@pytest.mark.parametrize("value", SPECIAL)
def test_log_joint_shared(rng, where, value):
    N, K, m = 10, 6, 4
    Y = rng.normal(size=(N, m))
    if where is not None:
        Y[where, 1] = value
    nu = rng.normal(size=(K, m))
    base = _crisp_base(rng, N, K)
    out = np.empty((N, K))
    estep.log_joint_shared(Y, nu, base, out)
    want = nv.log_joint_shared(Y, nu, base)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    if where is not None:  # the bad row never poisons the others
        ok = np.ones(N, bool)
        ok[where] = False
        assert np.all(np.isfinite(out[ok]) | (base[ok] == -np.inf))


@pytest.mark.parametrize("where", [None, 0, 7])
@pytest.mark.parametrize("value", SPECIAL)
def test_log_joint_full(rng, where, value):
    N, K, m = 8, 5, 3
    Z = rng.normal(size=(N, m))
    if where is not None:
        Z[where, 2] = value
    means = rng.normal(size=(K, m))
    P = np.ascontiguousarray(np.array([np.linalg.cholesky(_spd(rng, m)) for _ in range(K)]))
    base = _crisp_base(rng, N, K)
    out = np.empty((N, K))
    estep.log_joint_full(Z, means, P, base, out)
    want = nv.log_joint_full(Z, means, P, base)
    np.testing.assert_allclose(out, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("where", [None, 0, 4, 9])
@pytest.mark.parametrize("value", SPECIAL)
def test_log_responsibilities(rng, where, value):
    N, K = 10, 4
    la = rng.normal(size=(N, K)) * 300  # wide range: a per-component shift would underflow
    la[rng.random((N, K)) < 0.3] = -np.inf
    la[:, 1] = rng.normal(size=N) - 900.0
    if where is not None:
        la[where, 2] = value
    resp = np.empty((N, K))
    ll = estep.log_responsibilities(la, resp)
    want_resp, want_ll = nv.log_responsibilities(la)
    np.testing.assert_allclose(ll, want_ll, rtol=1e-12)
    np.testing.assert_allclose(resp, want_resp, rtol=1e-12, atol=1e-300)
    ok = np.isfinite(want_ll)
    np.testing.assert_allclose(resp[ok].sum(1), 1.0, rtol=1e-12)
    if where is not None and value is not -np.inf:
        assert np.isnan(resp[where]).all() or value == -np.inf
        assert ok.sum() >= N - 1


def test_all_minus_inf_row_is_nan_not_zero(rng):
    la = np.array([[-np.inf, -np.inf], [0.0, 1.0]])
    resp = np.empty((2, 2))
    ll = estep.log_responsibilities(la, resp)
    assert ll[0] == -np.inf and np.isnan(resp[0]).all()
    np.testing.assert_allclose(resp[1].sum(), 1.0)


def test_weighted_stats_and_shared_rhs(rng):
    N, K, n1, m = 30, 5, 4, 3
    Xt = rng.normal(size=(N, n1))
    resp = rng.random((N, K))
    resp[resp < 0.3] = 0.0  # exact zeros are skipped by the kernel
    resp[:, 3] = 0.0        # an empty component
    C = np.empty((K, n1, n1))
    c = np.empty((K, n1))
    mstep.weighted_stats(Xt, resp, C, c)
    Cw, cw = nv.weighted_stats(Xt, resp)
    np.testing.assert_allclose(C, Cw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c, cw, rtol=1e-12, atol=1e-12)
    means = rng.normal(size=(K, m))
    out = np.empty((n1, m))
    mstep.shared_rhs(resp, means, Xt, out)
    np.testing.assert_allclose(out, nv.shared_rhs(resp, means, Xt), rtol=1e-12, atol=1e-12)


def test_kron_assemble_and_matvec(rng):
    K, m, n1 = 3, 4, 5
    Lam = np.ascontiguousarray(np.array([_spd(rng, m) for _ in range(K)]))
    A = np.ascontiguousarray(np.array([_spd(rng, n1, 0.1) for _ in range(K)]))
    S = np.empty((m * n1, m * n1))
    mstep.kron_assemble(Lam, A, S)
    np.testing.assert_allclose(S, nv.kron_assemble(Lam, A), rtol=1e-12, atol=1e-12)
    H = rng.normal(size=(m, n1))
    out = np.empty((m, n1))
    mstep.sylvester_matvec(Lam, A, H, np.empty((m, n1)), out)
    np.testing.assert_allclose(out, nv.sylvester_matvec(Lam, A, H), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.ravel(), S @ H.ravel(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcg_solves_the_vec_system(seed):
    rng = np.random.default_rng(seed)
    K, m, n1 = 4, 5, 6
    Lam = np.ascontiguousarray(np.array([_spd(rng, m) for _ in range(K)]))
    A = np.ascontiguousarray(np.array([_spd(rng, n1, 0.05) for _ in range(K)]))
    R = rng.normal(size=(m, n1))
    want = np.linalg.solve(nv.kron_assemble(Lam, A), R.ravel()).reshape(m, n1)
    Pl = np.linalg.inv(Lam.mean(0))
    Pr = np.linalg.inv(A.sum(0))
    H = rng.normal(size=(m, n1))  # arbitrary warm start
    it, rel = mstep.pcg_sylvester(Lam, A, R, Pl, Pr, H, 1e-13, 500)
    assert rel <= 1e-12
    np.testing.assert_allclose(H, want, rtol=1e-9, atol=1e-11)
    H2 = want.copy()  # starting at the solution needs no iteration
    it2, _ = mstep.pcg_sylvester(Lam, A, R, Pl, Pr, H2, 1e-8, 500)
    assert it2 == 0


def _row_setup(rng, K=6, L=3, m=4, n=5):
    means = rng.normal(size=(K, m)) * 2
    P = np.ascontiguousarray(np.array([np.linalg.cholesky(_spd(rng, m)) for _ in range(K)]))
    logdet = np.array([2 * np.log(np.diag(p)).sum() for p in P])
    logw = np.log(rng.dirichlet(np.ones(K)))
    log_rho = np.full((L, K), -np.inf)
    for k in range(K):
        log_rho[k % L, k] = 0.0
    log_c = logw + 0.5 * logdet - 0.5 * m * nv.LOG_2PI
    H = rng.normal(size=(m, n))
    b = rng.normal(size=m)
    return means, P, logdet, logw, log_rho, log_c, H, b


@pytest.mark.parametrize("bad", [None, np.nan, np.inf])
def test_mapped_log_posteriors_full_vs_twin(rng, bad):
    from emtl_stream.model.source import SourceComponents

    means, P, logdet, logw, log_rho, log_c, H, b = _row_setup(rng)
    src = SourceComponents(means, P, logdet, logw, log_rho, np.arange(3), False)
    X = rng.normal(size=(9, 5))
    if bad is not None:
        X[4, 0] = bad
    out = np.empty((9, 3))
    marg = estep.mapped_log_posteriors_full(X, H, b, means, P, log_c, log_rho, out)
    with np.errstate(invalid="ignore"):
        want, wmarg = nv.class_log_posteriors(X @ H.T + b, src)
    ok = np.ones(9, bool)
    if bad is not None:
        ok[4] = False
        assert np.isnan(out[4]).all() and np.isnan(marg[4])
    np.testing.assert_allclose(out[ok], want[ok], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(marg[ok], wmarg[ok], rtol=1e-10)


@pytest.mark.parametrize("bad", [None, np.nan, -np.inf])
def test_mapped_log_posteriors_shared_and_one_row(rng, bad):
    from emtl_stream.model.source import SourceComponents

    means, P, logdet, logw, log_rho, log_c, H, b = _row_setup(rng)
    P = np.ascontiguousarray(np.repeat(P[:1], len(means), 0))
    logdet = np.full(len(means), logdet[0])
    log_c = logw + 0.5 * logdet - 0.5 * 4 * nv.LOG_2PI
    src = SourceComponents(means, P, logdet, logw, log_rho, np.arange(3), True)
    X = rng.normal(size=(7, 5))
    if bad is not None:
        X[0, 3] = bad
    G = np.ascontiguousarray(P[0].T @ H)
    g = P[0].T @ b
    nu = np.ascontiguousarray(means @ P[0])
    out = np.empty((7, 3))
    estep.mapped_log_posteriors_shared(X, G, g, nu, log_c, log_rho, out)
    with np.errstate(invalid="ignore"):
        want, _ = nv.class_log_posteriors(X @ H.T + b, src)
    ok = np.ones(7, bool)
    if bad is not None:
        ok[0] = False
        assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[ok], want[ok], rtol=1e-10, atol=1e-10)
    K = len(means)
    proba = np.empty(3)
    for j in range(7):
        idx = estep.classify_one_shared(X[j].copy(), G, g, nu, log_c, log_rho, np.empty(4),
                                        np.empty(K), np.empty(K), proba)
        if ok[j]:
            assert idx == np.argmax(want[j])
            np.testing.assert_allclose(proba, np.exp(want[j]), rtol=1e-10, atol=1e-12)
        else:
            assert idx == -1


def _mask_free(rng, m, n1):
    mask = rng.random((m, n1)) < 0.6
    mask[:, 0] = True
    return mask, np.flatnonzero(mask.ravel())


def test_kron_assemble_masked_is_the_submatrix(rng):
    K, m, n1 = 3, 4, 5
    Lam = np.ascontiguousarray([_spd(rng, m) for _ in range(K)])
    A = np.ascontiguousarray([_spd(rng, n1) for _ in range(K)])
    mask, free = _mask_free(rng, m, n1)
    S = np.empty((free.size, free.size))
    mstep.kron_assemble_masked(Lam, A, free // n1, free % n1, S)
    want = nv.kron_assemble(Lam, A)[np.ix_(free, free)]
    np.testing.assert_allclose(S, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcg_masked_solves_the_restricted_vec_system(seed):
    rng = np.random.default_rng(seed)
    K, m, n1 = 4, 5, 6
    Lam = np.ascontiguousarray([_spd(rng, m) for _ in range(K)])
    A = np.ascontiguousarray([_spd(rng, n1, 0.1) for _ in range(K)])
    R = rng.normal(size=(m, n1))
    mask, free = _mask_free(rng, m, n1)
    Mf = mask.astype(float)
    Pl = np.linalg.inv(Lam.mean(0))
    Pr = np.linalg.inv(A.mean(0))
    H = rng.normal(size=(m, n1))  # masked-out garbage in the start must not leak
    it, rel = mstep.pcg_sylvester_masked(Lam, A, R, Pl, Pr, Mf, H, 1e-13, 500)
    S = nv.kron_assemble(Lam, A)[np.ix_(free, free)]
    want = np.zeros(m * n1)
    want[free] = np.linalg.solve(S, R.ravel()[free])
    np.testing.assert_allclose(H.ravel(), want, rtol=1e-9, atol=1e-11)
    assert np.all(H[~mask] == 0.0) and 0 < it < 500 and rel <= 1e-13
    np.testing.assert_allclose(Mf * nv.masked_sylvester_matvec(Lam, A, H, Mf), Mf * R,
                               rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------ one-window kernels
def _bad_x(x, where, value):
    x = x.copy()
    x[{"start": 0, "middle": x.size // 2, "end": x.size - 1}[where]] = value
    return x


@pytest.mark.parametrize("where", [None, "start", "middle", "end"])
@pytest.mark.parametrize("value", SPECIAL)
def test_row_log_joint_full_and_classify_one_full_vs_twin(rng, where, value):
    K, L, m, n = 6, 3, 4, 5
    means, P, logdet, logw, log_rho, log_c, H, b = _row_setup(rng, K, L, m, n)
    Lam = np.einsum("kia,kja->kij", P, P)
    proba = np.empty(L)
    lj = np.empty(K)
    for _ in range(5):
        x = rng.normal(size=n)
        if where is not None:
            x = _bad_x(x, where, value)
        estep.row_log_joint_full(x, H, b, means, P, log_c, np.empty(m), np.empty(m), lj)
        idx = estep.classify_one_full(x, H, b, means, P, log_c, log_rho, np.empty(m),
                                      np.empty(m), np.empty(K), np.empty(K), proba)
        if where is not None:  # non-finite input: no finite joint, no class, NaN posterior
            assert not np.isfinite(lj).any()
            assert idx == -1 and np.isnan(proba).all()
            continue
        want_lj = nv.row_log_joint(H @ x + b, means, Lam, log_c)
        np.testing.assert_allclose(lj, want_lj, rtol=1e-11, atol=1e-11)
        want, _ = nv.row_class_log_posterior(want_lj, log_rho)
        assert idx == np.argmax(want)
        np.testing.assert_allclose(proba, np.exp(want), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("where", [None, "start", "middle", "end"])
@pytest.mark.parametrize("value", SPECIAL)
def test_row_log_joint_shared_vs_twin(rng, where, value):
    K, m, n = 5, 4, 6
    means = rng.normal(size=(K, m))
    P = np.linalg.cholesky(_spd(rng, m))
    H = rng.normal(size=(m, n))
    b = rng.normal(size=m)
    log_c = rng.normal(size=K)
    x = rng.normal(size=n)
    if where is not None:
        x = _bad_x(x, where, value)
    out = np.empty(K)
    estep.row_log_joint_shared(x, np.ascontiguousarray(P.T @ H), P.T @ b,
                               np.ascontiguousarray(means @ P), log_c, np.empty(m), out)
    if where is not None:
        assert not np.isfinite(out).any()
        return
    want = nv.row_log_joint(H @ x + b, means, np.repeat((P @ P.T)[None], K, 0), log_c)
    np.testing.assert_allclose(out, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("where", [None, "start", "middle", "end"])
@pytest.mark.parametrize("value", SPECIAL)
def test_row_class_log_posterior_vs_twin(rng, where, value):
    K, L = 6, 3
    log_rho = np.log(rng.dirichlet(np.ones(K), size=L))
    log_rho[rng.random((L, K)) < 0.4] = -np.inf  # labels a component cannot carry
    log_rho[:, 0] = np.log(1.0 / L)
    lj = rng.normal(size=K) * 50
    if where is not None:
        lj = _bad_x(lj, where, value)
    out = np.empty(L)
    marg = estep.row_class_log_posterior(lj, log_rho, np.empty(K), out)
    want, want_marg = nv.row_class_log_posterior(lj, log_rho)
    np.testing.assert_equal(np.isnan(out), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(out[ok], want[ok], rtol=1e-12, atol=1e-12)
    if np.isnan(want_marg):
        assert np.isnan(marg)
    else:
        assert marg == pytest.approx(want_marg, rel=1e-12, abs=1e-12)
    if value is np.nan and where is not None:
        assert np.isnan(out).all() and np.isnan(marg)


# ------------------------------------------------------------------ fused shared EM
def _em_shared_problem(rng, N=60, K=6, m=3, n=4, lam=0.3):
    """Labelled-ish burst with an offset column; returns kernel inputs and Λ."""
    Lam = _spd(rng, m)
    P = np.linalg.cholesky(Lam)  # Λ = P Pᵀ
    means = rng.normal(size=(K, m)) * 2
    X = rng.normal(size=(N, n))
    Xt = np.ascontiguousarray(np.hstack([X, np.ones((N, 1))]))
    base = _crisp_base(rng, N, K)
    H0t = np.zeros((m, n + 1))
    H0t[:, :n] = rng.normal(size=(m, n)) * 0.5
    D = np.diag([1.0] * n + [0.0])
    Ainv = np.ascontiguousarray(np.linalg.inv(Xt.T @ Xt + lam * D))
    return dict(Xt=Xt, H0t=H0t, P=np.ascontiguousarray(P), Lam=Lam, means=means, base=base,
                Ainv=Ainv, lam=lam, n=n)


def _run_em_shared(p, Ht, tol, max_iter):
    trace = np.full(max_iter + 1, -12345.0)
    n_iter, status, nt = mstep.em_shared(
        p["Xt"], Ht, p["H0t"], p["P"], np.ascontiguousarray(p["means"] @ p["P"]), p["base"],
        p["means"], p["Ainv"], p["lam"], p["n"], tol, max_iter, trace)
    return n_iter, status, trace[:nt]


@pytest.mark.parametrize("tol,max_iter", [(0.0, 6), (1e-9, 300)])
def test_em_shared_matches_the_written_out_loop(rng, tol, max_iter):
    p = _em_shared_problem(rng)
    H_start = rng.normal(size=p["H0t"].shape)
    Ht = H_start.copy()
    n_iter, status, trace = _run_em_shared(p, Ht, tol, max_iter)
    wH, wtrace, w_iter, w_status = nv.em_shared(p["Xt"], H_start, p["H0t"], p["Lam"],
                                                p["means"], p["base"], p["lam"], p["n"],
                                                tol, max_iter)
    assert (n_iter, status) == (w_iter, w_status)
    assert status == (0 if tol == 0.0 else 1) and n_iter >= 1
    np.testing.assert_allclose(trace, wtrace, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Ht, wH, rtol=1e-8, atol=1e-10)
    assert np.all(np.diff(trace) >= -1e-12)  # EM never lowers the penalised objective


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("value", SPECIAL)
def test_em_shared_stops_on_non_finite_data_without_touching_the_map(rng, where, value):
    p = _em_shared_problem(rng)
    N, n1 = p["Xt"].shape
    j = {"start": 0, "middle": N // 2, "end": N - 1}[where]
    p["Xt"][j, {"start": 0, "middle": 2, "end": n1 - 2}[where]] = value
    H_start = rng.normal(size=p["H0t"].shape)
    Ht = H_start.copy()
    n_iter, status, trace = _run_em_shared(p, Ht, 1e-9, 50)
    _, wtrace, w_iter, w_status = nv.em_shared(p["Xt"], H_start, p["H0t"], p["Lam"],
                                               p["means"], p["base"], p["lam"], p["n"],
                                               1e-9, 50)
    assert (n_iter, status, len(trace)) == (w_iter, w_status, len(wtrace)) == (0, -1, 1)
    assert not np.isfinite(trace[0])
    np.testing.assert_array_equal(Ht, H_start)


def test_em_shared_reports_a_non_finite_m_step(rng):
    p = _em_shared_problem(rng)
    p["Ainv"][0, 0] = np.nan  # as a singular (X̃ᵀX̃ + λD) would give
    Ht = rng.normal(size=p["H0t"].shape)
    n_iter, status, trace = _run_em_shared(p, Ht, 1e-9, 50)
    assert (n_iter, status, len(trace)) == (1, -2, 1) and np.isfinite(trace[0])
