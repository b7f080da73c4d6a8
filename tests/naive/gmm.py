"""Plain-loop references for the labelled GMM (independent of emtl_stream.model.gmm).

Covariances are always carried as full (K, m, m) matrices here; the covariance
type only changes how the M-step projects the scatter matrices.
"""

import numpy as np

from .features import mav_wl


def log_gauss(x, mean, cov):
    """log N(x | mean, cov) for one point, through slogdet and a solve."""
    d = x - mean
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (len(x) * np.log(2 * np.pi) + logdet + d @ np.linalg.solve(cov, d))


def responsibilities(X, y_idx, comp_labels, weights, means, covs, hard=False):
    """γ[j, k] with crisp labels: only components of y_j's class get a share."""
    N, K = len(X), len(weights)
    resp = np.zeros((N, K))
    total = 0.0
    for j in range(N):
        logs = np.full(K, -np.inf)
        for k in range(K):
            if comp_labels[k] == y_idx[j]:
                logs[k] = np.log(weights[k]) + log_gauss(X[j], means[k], covs[k])
        top = logs.max()
        a = np.exp(logs - top)
        total += top + np.log(a.sum())
        if hard:
            resp[j, int(np.argmax(logs))] = 1.0
        else:
            resp[j] = a / a.sum()
    return resp, total / N


def m_step(X, resp, cov_type, reg):
    """Maximum-likelihood weights, means and full covariance matrices."""
    N, m = X.shape
    K = resp.shape[1]
    nk = resp.sum(axis=0)
    weights = nk / N
    means = np.zeros((K, m))
    for k in range(K):
        for j in range(N):
            means[k] += resp[j, k] * X[j]
        means[k] /= nk[k]
    scatter = np.zeros((K, m, m))
    for k in range(K):
        for j in range(N):
            d = X[j] - means[k]
            scatter[k] += resp[j, k] * np.outer(d, d)
    covs = np.zeros((K, m, m))
    pooled = scatter.sum(axis=0) / N
    for k in range(K):
        own = scatter[k] / nk[k]
        if cov_type == "full":
            c = own
        elif cov_type == "tied":
            c = pooled
        elif cov_type == "diag":
            c = np.diag(np.diag(own))
        elif cov_type == "tied_diag":
            c = np.diag(np.diag(pooled))
        elif cov_type == "spherical":
            c = np.trace(own) / m * np.eye(m)
        elif cov_type == "tied_spherical":
            c = np.trace(pooled) / m * np.eye(m)
        else:
            raise ValueError(cov_type)
        covs[k] = c + reg * np.eye(m)
    return weights, means, covs


def em(X, y_idx, comp_labels, weights, means, covs, cov_type, reg, n_iter, hard=False):
    """``n_iter`` EM iterations from the given parameters; returns them and the ℓ trace."""
    trace = []
    for _ in range(n_iter):
        resp, ll = responsibilities(X, y_idx, comp_labels, weights, means, covs, hard)
        trace.append(ll)
        weights, means, covs = m_step(X, resp, cov_type, reg)
    trace.append(responsibilities(X, y_idx, comp_labels, weights, means, covs)[1])
    return weights, means, covs, trace


def lda_posterior(X_train, y_idx, X_test, reg):
    """Closed-form LDA posterior: class means, pooled ML covariance + reg·I, class priors."""
    N, m = X_train.shape
    L = int(y_idx.max()) + 1
    means = np.array([X_train[y_idx == c].mean(axis=0) for c in range(L)])
    priors = np.bincount(y_idx) / N
    cov = np.zeros((m, m))
    for j in range(N):
        d = X_train[j] - means[y_idx[j]]
        cov += np.outer(d, d)
    cov = cov / N + reg * np.eye(m)
    icov = np.linalg.inv(cov)
    # log p(x, c) up to a class-independent constant
    scores = X_test @ icov @ means.T - 0.5 * np.sum(means @ icov * means, axis=1) + np.log(priors)
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    return p / p.sum(axis=1, keepdims=True)


def expand_covariances(cov, cov_type, K, m):
    """Any covariance type's array as (K, m, m) matrices."""
    cov = np.asarray(cov, float)
    out = np.zeros((K, m, m))
    for k in range(K):
        if cov_type == "full":
            out[k] = cov[k]
        elif cov_type == "tied":
            out[k] = cov
        elif cov_type == "diag":
            out[k] = np.diag(cov[k])
        elif cov_type == "tied_diag":
            out[k] = np.diag(cov)
        elif cov_type == "spherical":
            out[k] = cov[k] * np.eye(m)
        else:
            out[k] = float(cov) * np.eye(m)
    return out


def features_mav_wl(emg, seg_start, seg_len, seg_class, seg_rep, win=40, step=10):
    """MAV and WL per channel on windows cut inside segments (README recipe)."""
    X, y, rep = [], [], []
    for s, n, c, r in zip(seg_start, seg_len, seg_class, seg_rep):
        seg = emg[s:s + n].astype(float)
        for a in range(0, n - win + 1, step):
            w = seg[a:a + win]
            X.append(mav_wl(w))
            y.append(c)
            rep.append(r)
    return np.array(X), np.array(y), np.array(rep)
