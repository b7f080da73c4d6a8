#!/usr/bin/env python3
"""Benchmark TransferEM against the reference package (em-transfer-learning), side by side.

Problem (same spirit as /work/shared/tools/bench_reference.py): L = 8 classes with
1 or 3 Gaussian components per class in d dimensions, known ("oracle") source
parameters, a random target map B (x = B⁻¹ z + noise, so the ideal H is B), and a
labelled calibration set of m points. Both implementations get identical inputs
and the reference's own settings: λ = 1e-5 absolute, shrink towards zero, no
offset, at most 50 EM iterations.

Reported per cell: median fit time over repeats after one untimed warm-up (a
single run when the first call is slower than --slow), the ratio reference/ours,
and the penalised mean log-likelihood of both H under *our* objective (same λ)
— ours should be equal or higher (the reference's full-precision M-step is an
inexact BFGS with a wrong gradient, W5). The reference's full model above
--bfgs-max-d is skipped (hours per fit at d = 128, see benchmarks-reference.md).

Separately: numba compile time (fresh cache dir, a child process) and the time a
second process needs to import and load the cached kernels.

Usage::

    python tools/bench_transfer.py                 # default grid, about 5 minutes
    python tools/bench_transfer.py --quick         # d = 8, 32, 128; m = 200; ~1 minute
    python tools/bench_transfer.py --no-reference --dims 128 --ks 3 --ms 1000 --kinds full
    python tools/bench_transfer.py --accuracy ../shared/data/emg   # dense vs structure="channel"
    python tools/bench_transfer.py --ring64 --blas-threads 1   # 64-ch ring: one start, rolls
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from emtl_stream.errors import TransferConvergenceWarning
from emtl_stream.model.source import SourceComponents
from emtl_stream.model.transfer import TransferEM


def make_problem(d, per_class, L, shared, seed):
    """Oracle source parameters, a target map and a sampler."""
    rng = np.random.default_rng(seed)
    K = L * per_class
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    base_var = np.exp(rng.uniform(np.log(0.1), 0.0, d))
    covs = []
    for _ in range(K):
        s = base_var if shared else base_var * np.exp(0.3 * rng.normal(size=d))
        covs.append((Q * s) @ Q.T)
    Lsqrt = Q * np.sqrt(base_var)  # base-Mahalanobis unit
    centres = rng.normal(size=(L, d))
    centres *= 5.0 / np.sqrt(2 * d)
    sub = rng.normal(size=(K, d)) * (2.0 / np.sqrt(2 * d))
    means = np.array([centres[k // per_class] + (sub[k] if per_class > 1 else 0) for k in range(K)])
    means = means @ Lsqrt.T
    precs = np.array([np.linalg.inv(c) for c in covs])
    P = np.array([np.linalg.cholesky(p) for p in precs])
    logdet = np.array([2 * np.log(np.diag(p)).sum() for p in P])
    log_rho = np.full((L, K), -np.inf)
    for k in range(K):
        log_rho[k // per_class, k] = 0.0
    src = SourceComponents(means, P, logdet, np.full(K, -np.log(K)), log_rho, np.arange(L), shared)
    U, _ = np.linalg.qr(rng.normal(size=(d, d)))
    V, _ = np.linalg.qr(rng.normal(size=(d, d)))
    B = (U * np.exp(rng.uniform(np.log(0.5), np.log(2), d))) @ V.T
    Binv = np.linalg.inv(B)
    chol = np.array([np.linalg.cholesky(c) for c in covs])

    def sample(n, r):
        comp = np.arange(n) % K
        Z = means[comp] + np.einsum("kij,kj->ki", chol[comp], r.normal(size=(n, d)))
        X = Z @ Binv.T
        X += 0.1 * np.sqrt(np.mean(X**2)) * r.normal(size=X.shape)
        return X, comp // per_class

    return src, covs, sample


def reference_model(kind, src, covs):
    """Reference model object carrying the attributes its transfer classes read."""
    from em_transfer_learning import lgmm, transfer_learning as tl

    K, d = src.means.shape
    L = len(src.classes)
    P_Y = np.exp(src.log_label_given_comp)
    if kind == "shared":
        mdl = lgmm.SLGMM()
        mdl._Lambda = src.precisions[0]
    else:
        mdl = lgmm.LGMM()
        mdl._Lambdas = np.stack(src.precisions, axis=2)
        mdl._sqrtdets = np.exp(0.5 * src.log_det_prec)
    mdl._Mus = src.means.T.copy()
    mdl._Pi = np.exp(src.log_weights)
    mdl._P_Y = P_Y
    mdl._labels = np.arange(L)
    mdl._dim = d
    cls = tl.SLGMM_transfer_model if kind == "shared" else tl.LGMM_transfer_model

    def fit(X, y):
        with np.errstate(all="ignore"):
            tm = cls(mdl, regul=1e-5, error_delta=1e-5, max_it=50)
            tm.fit(X, y)
        return np.asarray(tm._H, float)

    return fit


def ours(kind, src):
    def fit(X, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TransferConvergenceWarning)
            te = TransferEM(src, kind=kind, reg=1e-5, reg_scale="absolute", shrink_to="zero",
                            max_iter=50).fit(X, y)
        fit.last = te
        return te.H_

    return fit


def timed(fn, X, y, repeats, slow):
    t = time.perf_counter()
    H = fn(X, y)
    first = time.perf_counter() - t
    if first >= slow:
        return first, H, 1
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        H = fn(X, y)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), H, len(ts)


def compile_and_load_times():
    """(compile s, cached-load s): child processes with a fresh NUMBA_CACHE_DIR."""
    code = ("import time; t=time.perf_counter(); import emtl_stream.model.transfer, "
            "emtl_stream.model.classify; print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
        out = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, check=True)
            out.append(float(r.stdout.strip().splitlines()[-1]))
    return out[0], out[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3], help="components per class")
    p.add_argument("--ms", type=int, nargs="+", default=[10, 200, 1000])
    p.add_argument("--kinds", nargs="+", default=["shared", "full"], choices=["shared", "full"])
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slow", type=float, default=1.0, help="first call slower than this: 1 sample")
    p.add_argument("--bfgs-max-d", type=int, default=32,
                   help="skip the reference's full model above this d")
    p.add_argument("--ref-full-ms", type=int, nargs="+", default=[10, 200],
                   help="calibration sizes at which the reference's full model runs")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--quick", action="store_true", help="d = 8, 32, 128; m = 200")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS threads (threadpoolctl) for both implementations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--struct-channels", type=int, nargs="*", default=[8, 64],
                   help="structure='channel' timing at C channels x 4 features (none: skip)")
    p.add_argument("--struct-ns", type=int, nargs="+", default=[40, 200],
                   help="calibration sizes for the structured timing")
    p.add_argument("--struct-ring-max", type=int, default=8,
                   help="also time the full ring search up to this many channels")
    p.add_argument("--accuracy", metavar="EMG_DIR", default=None,
                   help="only print dense vs structured accuracy on the shared recordings")
    p.add_argument("--ring64", action="store_true",
                   help="only the 64-channel ring, structure='channel': one start, the full "
                        "64-roll search and the pruned one, side by side")
    args = p.parse_args(argv)
    if args.blas_threads:
        import threadpoolctl
        threadpoolctl.threadpool_limits(args.blas_threads)
    if args.ring64:
        ring64_rows(args)
        return
    if args.accuracy:
        accuracy_rows(args.accuracy, [
            ("dense, ring, reg=1 (Π = Λ)", dict(ring_channels=8, reg=1.0)),
            ("channel, ring, reg=0.1, Π = I (default)",
             dict(ring_channels=8, reg=0.1, structure="channel")),
            ("channel, ring, reg=0.1, Π = Λ", dict(ring_channels=8, reg=0.1,
                                                   structure="channel", penalty="precision")),
        ])
        return
    if args.quick:
        args.dims, args.ms = [8, 32, 128], [200]
    have_ref = False
    if not args.no_reference:
        try:
            import em_transfer_learning  # noqa: F401
            have_ref = True
        except ImportError:
            print("reference not importable; timing ours only", flush=True)
    try:
        import threadpoolctl
        blas = "; ".join("%s %s threads" % (i.get("internal_api"), i.get("num_threads"))
                         for i in threadpoolctl.threadpool_info())
    except Exception:
        blas = "BLAS unknown"
    print("Python %s, numpy %s, %s, %d CPUs" % (platform.python_version(), np.__version__, blas,
                                                os.cpu_count()), flush=True)
    comp, load = compile_and_load_times()
    print("numba compile (fresh cache, import of transfer+classify): %.2f s; cached load in a "
          "second process: %.2f s" % (comp, load), flush=True)
    print()
    print("| kind | d | K/class | m | ours | iters | reference | iters | ratio | obj ours − ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for d in args.dims:
            for per in args.ks:
                src, covs, sample = make_problem(d, per, args.classes, kind == "shared",
                                                 args.seed + 100 * d + per)
                for m in args.ms:
                    X, y = sample(m, np.random.default_rng(args.seed + m))
                    fo = ours(kind, src)
                    t_o, H_o, _ = timed(fo, X, y, args.repeats, args.slow)
                    te = fo.last
                    row = ["%s" % kind, "%d" % d, "%d" % per, "%d" % m, _ms(t_o),
                           "%d" % te.n_iter_]
                    run_ref = have_ref and not (kind == "full" and (
                        d > args.bfgs_max_d or m not in args.ref_full_ms))
                    if run_ref:
                        fr = reference_model(kind, src, covs)
                        t_r, H_r, _ = timed(fr, X, y, args.repeats, args.slow)
                        if np.all(np.isfinite(H_r)):
                            dobj = te.objective(X, y) - te.objective(X, y, H=H_r)
                            dobj_s = "%+.3g" % dobj
                        else:
                            dobj_s = "ref H NaN"
                        row += [_ms(t_r), "–", "%.0f×" % (t_r / t_o), dobj_s]
                    else:
                        row += ["skip", "–", "–", "–"]
                    print("| " + " | ".join(row) + " |", flush=True)
    if args.struct_channels:
        structured_rows(args)


def structured_rows(args):
    """Fit times of structure="channel" (per-feature-type channel mixing), C x 4 features."""
    from emtl_stream.model.transfer import channel_mask

    print()
    print("| structure | channels x features | N | start(s) | solver | free entries | ours "
          "| iters |")
    print("|---|---|---|---|---|---|---|---|")
    for C in args.struct_channels:
        d = 4 * C
        src, _, sample = make_problem(d, 1, 5, True, args.seed + 7 * C)
        for N in args.struct_ns:
            X, y = sample(N, np.random.default_rng(args.seed + N))
            runs = [("mask", dict(structure=channel_mask(d, C)), "1")]
            if C <= args.struct_ring_max:
                runs.append(("ring", dict(structure="channel", ring_channels=C), "%d rolls" % C))
            for _, kw, starts in runs:
                def fit(X, y, kw=kw):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", TransferConvergenceWarning)
                        te = TransferEM(src, reg=0.1, **kw).fit(X, y)
                    fit.last = te
                    return te.H_
                t, _, _ = timed(fit, X, y, args.repeats, args.slow)
                te = fit.last
                p = int(te.mask_.sum())
                solver = "dense" if p <= te.masked_dense_max else "CG"
                print("| channel | %d x 4 | %d | %s | %s | %d | %s | %d |" % (
                    C, N, starts, solver, p, _ms(t), te.n_iter_), flush=True)


def ring64_rows(args, C=64, N=40):
    """64 electrodes x 4 features, channel-structured map (16,384 free entries), labelled
    burst of N windows drawn from the source and rolled by 5 electrodes: one start (the identity),
    the exhaustive 64-roll search and the pruned one (every roll scored, EM from the
    ROLL_PRUNE_KEEP best), interleaved so that load drifts hit all four alike."""
    from emtl_stream.model.transfer import ROLL_PRUNE_KEEP, channel_mask, ring_roll_matrix

    d = 4 * C
    src, covs, _ = make_problem(d, 1, 5, True, args.seed + 7 * C)
    r = np.random.default_rng(args.seed + N)
    y = np.arange(N) % 5
    Z = src.means[y] + r.normal(size=(N, d)) @ np.linalg.cholesky(covs[0]).T
    X = Z @ ring_roll_matrix(d, C, 5)  # x = R_5ᵀ z: the roll undoing it is R_5
    import emtl_stream.model.transfer as tr

    runs = [("one start (identity), Kronecker-preconditioned CG kernel",
             dict(structure=channel_mask(d, C), _block=False)),
            ("one start (identity), block-Jacobi CG", dict(structure=channel_mask(d, C))),
            ("ring, full search (64 rolls)", dict(structure="channel", ring_channels=C,
                                                   roll_starts=C)),
            ("ring, pruned search (%d of 64 rolls)" % ROLL_PRUNE_KEEP,
             dict(structure="channel", ring_channels=C))]
    times = {name: [] for name, _ in runs}
    last = {}
    for rep in range(args.repeats + 1):
        for name, kw in runs:
            if rep > 0 and times[name] and times[name][0] > args.slow * 5:
                continue  # one timed run of a slow configuration is enough
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TransferConvergenceWarning)
                kw = dict(kw)
                tr.BLOCK_JACOBI_CG = kw.pop("_block", True)
                t = time.perf_counter()
                te = TransferEM(src, reg=0.1, **kw).fit(X, y)
                dt = time.perf_counter() - t
                tr.BLOCK_JACOBI_CG = True
            if rep > 0 or name.startswith("ring, full"):
                times[name].append(dt)  # the full search is timed from its first run
            last[name] = te
    print()
    print("| %d ch x 4, structure=channel, N = %d | median | runs | EM starts | best roll "
          "| iters | CG iters/M-step |" % (C, N))
    print("|---|---|---|---|---|---|---|")
    for name, _ in runs:
        te = last[name]
        starts = len(te.roll_objectives_) if te.roll_objectives_ else 1
        cg = np.mean(te.cg_iters_) if te.cg_iters_ else float("nan")
        print("| %s | %s | %d | %d | %s | %d | %.0f |" % (
            name, _ms(statistics.median(times[name])), len(times[name]), starts,
            te.best_roll_, te.n_iter_, cg), flush=True)


def _hudgins(path):
    """MAV, WL, ZC, SSC per channel (channel-major); 200 ms windows, 50 ms step at 200 Hz."""
    z = np.load(path)
    emg = z["emg"].astype(float)
    X, y, rep, t = [], [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        seg = emg[s:s + n]
        starts = np.arange(0, n - 40 + 1, 10)
        W = np.stack([seg[a:a + 40] for a in starts])
        d = np.diff(W, axis=1)
        f = np.stack([np.abs(W).mean(1), np.abs(d).sum(1), (W[:, :-1] * W[:, 1:] < 0).sum(1),
                      (d[:, :-1] * d[:, 1:] < 0).sum(1)], axis=2)
        X.append(f.reshape(len(starts), -1))
        y += [c] * len(starts)
        rep += [r] * len(starts)
        t += list((starts + 40) / 200.0)
    return np.vstack(X), np.array(y), np.array(rep), np.array(t)


def accuracy_rows(data_dir, configs):
    """Mean accuracy over the shared subjects: tied LDA on baseline reps 0-2, calibration =
    first T s per class of shifted rep 0, test = shifted reps 2-7 (algorithm.md §3)."""
    import glob
    import itertools

    from emtl_stream.model.source import SourceComponents

    files = sorted(glob.glob(os.path.join(data_dir, "ciil_es_s*_baseline.npz")))
    res = {name: [] for name, _ in configs}
    for bf in files:
        Xb, yb, rb, _ = _hudgins(bf)
        Xs, ys, rs, ts = _hudgins(bf.replace("baseline", "shifted"))
        Xb, yb = Xb[rb <= 2], yb[rb <= 2]
        cl = np.unique(yb)
        M = np.array([Xb[yb == c].mean(0) for c in cl])
        R = Xb - M[np.searchsorted(cl, yb)]
        S = R.T @ R / len(Xb)
        S += 1e-6 * np.eye(S.shape[0]) * np.trace(S) / S.shape[0]
        P = np.linalg.cholesky(np.linalg.inv(S))
        L = len(cl)
        src = SourceComponents(M, np.repeat(P[None], L, 0),
                               np.full(L, 2 * np.log(np.diag(P)).sum()), np.full(L, -np.log(L)),
                               np.where(np.eye(L) > 0, 0.0, -np.inf), cl, True)
        te = rs >= 2
        for name, kw in configs:
            def acc(sel):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TransferConvergenceWarning)
                    tem = TransferEM(src, **kw).fit(Xs[sel], ys[sel])
                return np.mean(tem.predict(Xs[te]) == ys[te])
            row = []
            for T in (0.25, 0.5, 1.0):
                sel = (rs == 0) & (ts <= T + 1e-9)
                row.append(acc(sel))
                if T == 0.5:
                    row.append(np.mean([acc(sel & np.isin(ys, sub))
                                        for sub in itertools.combinations(cl, 3)]))
            res[name].append(row)
    print()
    print("Accuracy, %d subjects (Hudgins features, tied LDA):" % len(files))
    print()
    print("| method | 0.25 s | 0.5 s | 0.5 s, 3 of 5 classes | 1 s |")
    print("|---|---|---|---|---|")
    for name, _ in configs:
        print("| %s | %s |" % (name, " | ".join("%.3f" % v for v in np.mean(res[name], 0))),
              flush=True)


def _ms(t):
    return "%.2f ms" % (t * 1e3) if t < 1 else "%.2f s" % t


if __name__ == "__main__":
    main()
