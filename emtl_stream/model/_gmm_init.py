"""Initial responsibilities of the labelled Gaussian mixture: k-means++, Lloyd, random."""

from __future__ import annotations

import numpy as np


def _kmeans_plusplus(X: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_clusters`` k-means++ seeds among the rows of X (D² sampling); their indices."""
    n = X.shape[0]
    chosen = [int(rng.integers(n))]
    d2 = np.einsum("ij,ij->i", X - X[chosen[0]], X - X[chosen[0]])
    for _ in range(1, n_clusters):
        total = d2.sum()
        if total > 0.0:
            nxt = int(rng.choice(n, p=d2 / total))
        else:  # all remaining points coincide with a centre: pick any unused row
            free = np.setdiff1d(np.arange(n), chosen)
            nxt = int(rng.choice(free))
        chosen.append(nxt)
        diff = X - X[nxt]
        d2 = np.minimum(d2, np.einsum("ij,ij->i", diff, diff))
    return np.asarray(chosen)


def _nearest(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = ((X[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return np.argmin(d2, axis=1)


def _init_block_resp(X: np.ndarray, n_clusters: int, method: str,
                     rng: np.random.Generator) -> np.ndarray:
    """Return initial responsibilities (len(X), n_clusters) of one block of points."""
    n = X.shape[0]
    if method == "random":
        resp = rng.uniform(size=(n, n_clusters))
        return resp / resp.sum(axis=1, keepdims=True)
    if method == "random_from_data":
        centres = X[rng.choice(n, size=n_clusters, replace=False)]
    else:
        centres = X[_kmeans_plusplus(X, n_clusters, rng)]
        if method == "kmeans":  # Lloyd iterations from the k-means++ seeds
            for _ in range(100):
                lab = _nearest(X, centres)
                new = np.array([X[lab == c].mean(axis=0) if np.any(lab == c) else centres[c]
                                for c in range(n_clusters)])
                if np.allclose(new, centres, rtol=0.0, atol=0.0):
                    break
                centres = new
    resp = np.zeros((n, n_clusters))
    resp[np.arange(n), _nearest(X, centres)] = 1.0
    return resp
