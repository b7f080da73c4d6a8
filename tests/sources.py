"""Random source models and shifted target data shared by the transfer tests.

``make_source`` builds a :class:`~emtl_stream.model.source.SourceComponents` with
well-conditioned precisions; ``shifted`` draws windows from it and maps them
through a known random linear shift, so the ideal transfer map is known.
"""

import numpy as np

from emtl_stream.model.source import SourceComponents


def make_source(rng, m, L, per_class=1, shared=True, sep=3.0, classes=None):
    """Draw a labelled Gaussian-mixture source model.

    Parameters
    ----------
    rng : numpy.random.Generator
    m : int
        Features.
    L : int
        Classes.
    per_class : int
        Components per class (K = L * per_class, component k in class k // per_class).
    shared : bool
        One precision for every component, or one each.
    sep : float
        Scale of the component means (larger: better separated).
    classes : array-like of shape (L,), optional
        Class labels; default ``0 .. L-1``.

    Returns
    -------
    SourceComponents
    """
    K = L * per_class
    means = rng.normal(size=(K, m)) * sep
    Ps = []
    for _ in range(1 if shared else K):
        A = rng.normal(size=(m, m))
        Ps.append(np.linalg.cholesky(A @ A.T / m + np.eye(m)))
    Ps = np.repeat(np.array(Ps), K, 0) if shared else np.array(Ps)
    logdet = np.array([2 * np.log(np.diag(p)).sum() for p in Ps])
    log_rho = np.full((L, K), -np.inf)
    for k in range(K):
        log_rho[k // per_class, k] = 0.0
    cls = np.arange(L) if classes is None else np.asarray(classes)
    return SourceComponents(means, Ps, logdet, np.full(K, -np.log(K)), log_rho, cls, shared)


def sample(rng, src, N, noise=0.3):
    """Draw ``N`` points around the source's component means.

    Parameters
    ----------
    rng : numpy.random.Generator
    src : SourceComponents
    N : int
    noise : float
        Isotropic standard deviation around each mean.

    Returns
    -------
    Z : ndarray of shape (N, m)
    y : ndarray of shape (N,) int
        Class index of each point.
    """
    K, per = src.n_components, src.n_components // len(src.classes)
    comp = rng.integers(0, K, N)
    Z = src.means[comp] + noise * rng.normal(size=(N, src.n_features))
    return Z, comp // per


def shifted(rng, src, N, strength=0.3, noise=0.3):
    """Draw ``N`` points from the source and shift them by a random linear map.

    Parameters
    ----------
    rng : numpy.random.Generator
    src : SourceComponents
    N : int
    strength : float
        Scale of the random part of the shift ``B = I + strength * G``.
    noise : float
        See :func:`sample`.

    Returns
    -------
    X : ndarray of shape (N, m)
        ``B⁻¹ z``: the ideal transfer map is ``B``.
    y : ndarray of shape (N,) int
    B : ndarray of shape (m, m)
    """
    Z, y = sample(rng, src, N, noise)
    m = src.n_features
    B = np.eye(m) + strength * rng.normal(size=(m, m))
    return Z @ np.linalg.inv(B).T, y, B


def lda_source(X, y):
    """Fit a tied-covariance (LDA) source model, one component per class, in closed form.

    Parameters
    ----------
    X : ndarray of shape (N, m)
    y : ndarray of shape (N,)
        Class labels (sorted unique values become the classes).

    Returns
    -------
    SourceComponents
        Class means and the pooled within-class precision, with a ridge of
        ``1e-6`` times the mean variance.
    """
    classes = np.unique(y)
    means = np.array([X[y == c].mean(0) for c in classes])
    R = X - means[np.searchsorted(classes, y)]
    cov = R.T @ R / len(X)
    cov += 1e-6 * np.eye(X.shape[1]) * np.trace(cov) / X.shape[1]
    P = np.linalg.cholesky(np.linalg.inv(cov))
    L = len(classes)
    log_rho = np.where(np.eye(L) > 0, 0.0, -np.inf)
    return SourceComponents(means, np.repeat(P[None], L, 0),
                            np.full(L, 2 * np.log(np.diag(P)).sum()), np.full(L, -np.log(L)),
                            log_rho, classes, True)


def shared_hudgins(emg_dir, subject, condition):
    """Hudgins features of one shared recording, written out in plain numpy.

    MAV, WL, ZC, SSC per channel (channel-major), 200 ms windows every 50 ms at 200 Hz,
    cut inside each labelled segment.

    Parameters
    ----------
    emg_dir : pathlib.Path
        Folder of the CIIL electrode-shift npz files.
    subject : int
    condition : {"baseline", "shifted"}

    Returns
    -------
    X : ndarray of shape (n, 4 * channels)
    y, rep : ndarray of shape (n,)
        Class and repetition of each window.
    t : ndarray of shape (n,)
        Window end in seconds from its segment's start.
    """
    z = np.load(emg_dir / f"ciil_es_s{subject:02d}_{condition}.npz")
    emg = z["emg"].astype(float)
    win, step = 40, 10
    X, y, rep, t = [], [], [], []
    for s, n, c, r in zip(z["seg_start"], z["seg_len"], z["seg_class"], z["seg_rep"]):
        seg = emg[s:s + n]
        starts = np.arange(0, n - win + 1, step)
        W = np.stack([seg[a:a + win] for a in starts])  # (w, win, ch)
        d = np.diff(W, axis=1)
        feats = np.stack([np.abs(W).mean(1), np.abs(d).sum(1),
                          (W[:, :-1] * W[:, 1:] < 0).sum(1),
                          (d[:, :-1] * d[:, 1:] < 0).sum(1)], axis=2)  # (w, ch, 4)
        X.append(feats.reshape(len(starts), -1))
        y += [c] * len(starts)
        rep += [r] * len(starts)
        t += list((starts + win) / 200.0)
    return np.vstack(X), np.array(y), np.array(rep), np.array(t)
