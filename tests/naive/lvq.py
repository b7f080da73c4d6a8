"""Plain-loop references for the LVQ models (independent of emtl_stream.model.lvq)."""

import numpy as np


def distances(X, prototypes, omegas):
    """d[j, k] = (x_j − w_k)ᵀ Ω_kᵀ Ω_k (x_j − w_k), one point and prototype at a time.

    ``omegas`` is (r, m) for a shared metric or (K, r, m) for local ones.
    """
    omegas = np.asarray(omegas)
    K = len(prototypes)
    out = np.empty((len(X), K))
    for j, x in enumerate(X):
        for k in range(K):
            om = omegas if omegas.ndim == 2 else omegas[k]
            diff = x - prototypes[k]
            lam = om.T @ om
            out[j, k] = diff @ lam @ diff
    return out


def nearest_prototype_predict(X, prototypes, prototype_labels, classes, omegas):
    """Label of the closest prototype of every row."""
    d = distances(X, prototypes, omegas)
    out = []
    for j in range(len(X)):
        best = 0
        for k in range(1, d.shape[1]):
            if d[j, k] < d[j, best]:
                best = k
        out.append(classes[prototype_labels[best]])
    return np.array(out)


def glvq_cost(X, y_idx, prototypes, prototype_labels, omegas, beta):
    """Mean GLVQ cost (1/N) Σ Φ((d⁺ − d⁻)/(d⁺ + d⁻)) with a logistic Φ (identity if beta is None)."""
    d = distances(X, prototypes, omegas)
    total = 0.0
    for j in range(len(X)):
        dp = min(d[j, k] for k in range(len(prototypes)) if prototype_labels[k] == y_idx[j])
        dm = min(d[j, k] for k in range(len(prototypes)) if prototype_labels[k] != y_idx[j])
        mu = (dp - dm) / (dp + dm)
        total += mu if beta is None else 1.0 / (1.0 + np.exp(-beta * mu))
    return total / len(X)


def components_log_posterior(comp, X):
    """Class log-posteriors and per-component responsibilities from SourceComponents arrays.

    log a_jk = log π_k + ½ log det Λ_k − ½ ‖(x_j − μ_k) P_k‖² (the 2π term cancels);
    a class's log joint is the log-sum-exp over the components that carry it.

    Returns
    -------
    log_post : ndarray of shape (N, n_classes)
    log_resp : ndarray of shape (N, K)
        Responsibilities of the components *within their class* (log).
    """
    N, K = len(X), comp.means.shape[0]
    la = np.empty((N, K))
    for k in range(K):
        y = (X - comp.means[k]) @ comp.prec_factor[k]
        la[:, k] = comp.log_weights[k] + 0.5 * comp.log_det_prec[k] - 0.5 * np.sum(y * y, axis=1)
    L = comp.log_label_given_comp.shape[0]
    log_joint = np.empty((N, L))
    log_resp = np.full((N, K), -np.inf)
    for l in range(L):
        ks = np.flatnonzero(np.isfinite(comp.log_label_given_comp[l]))
        a = la[:, ks] + comp.log_label_given_comp[l, ks]
        mx = a.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(a - mx).sum(axis=1))
        log_joint[:, l] = lse
        log_resp[:, ks] = a - lse[:, None]
    mx = log_joint.max(axis=1, keepdims=True)
    log_post = log_joint - (mx + np.log(np.exp(log_joint - mx).sum(axis=1, keepdims=True)))
    return log_post, log_resp
