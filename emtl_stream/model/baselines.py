"""Naive competitors that transfer learning must beat.

:class:`ShrinkageLDA` retrains a linear discriminant on the calibration burst alone,
with the Ledoit-Wolf shrinkage of the pooled covariance (the "fair naive competitor"
of issue 5: plain LDA falls apart below about 1 s of data per class).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from .._checks import as_float_matrix


def ledoit_wolf_shrinkage(Xc: np.ndarray) -> float:
    """Ledoit-Wolf optimal shrinkage intensity for centred data.

    Parameters
    ----------
    Xc : ndarray of shape (n_samples, n_features)
        Data with (class-wise) means removed.

    Returns
    -------
    float
        Weight in [0, 1] of the scaled identity in ``(1-a) S + a mu I``.
    """
    n, p = Xc.shape
    S = Xc.T @ Xc / n
    mu = np.trace(S) / p
    delta = np.sum((S - mu * np.eye(p)) ** 2) / p
    X2 = Xc**2
    beta = np.sum(X2.T @ X2 / n - S**2) / (p * n)
    if delta <= 0.0:
        return 1.0
    return float(min(max(beta, 0.0), delta) / delta)


class ShrinkageLDA:
    """Linear discriminant analysis with a Ledoit-Wolf-shrunk pooled covariance.

    Class priors are the empirical class frequencies, as in scikit-learn's
    ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    means_ : ndarray of shape (n_classes, n_features)
    covariance_ : ndarray of shape (n_features, n_features)
    shrinkage_ : ndarray of shape (n_classes,)
    """

    def fit(self, X, y) -> "ShrinkageLDA":
        """Fit on features ``X`` of shape (n_samples, n_features) and labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self
        """
        X = as_float_matrix(X, "X", min_rows=2)
        y = np.asarray(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"y must have shape ({X.shape[0]},), got {y.shape}.")
        self.classes_, idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("ShrinkageLDA needs at least two classes in y.")
        counts = np.bincount(idx).astype(float)
        self.means_ = np.array([X[idx == c].mean(axis=0) for c in range(len(self.classes_))])
        self.priors_ = counts / counts.sum()
        # Per-class Ledoit-Wolf covariances on standardised features, weighted by
        # the class priors (the scikit-learn "lsqr"/"auto" definition), so that the
        # shrinkage target is well scaled whatever the feature units.
        p = X.shape[1]
        self.covariance_ = np.zeros((p, p))
        shrinkages = []
        for c in range(len(self.classes_)):
            Xc = X[idx == c] - self.means_[c]
            std = Xc.std(axis=0)
            std[std == 0] = 1.0
            Z = Xc / std
            a = ledoit_wolf_shrinkage(Z)
            S = Z.T @ Z / Z.shape[0]
            S = (1 - a) * S + a * np.trace(S) / p * np.eye(p)
            self.covariance_ += self.priors_[c] * S * np.outer(std, std)
            shrinkages.append(a)
        self.shrinkage_ = np.array(shrinkages)
        self.coef_ = linalg.lstsq(self.covariance_, self.means_.T)[0].T
        self.intercept_ = -0.5 * np.sum(self.coef_ * self.means_, axis=1) + np.log(self.priors_)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Linear class scores, shape (n_samples, n_classes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        X = as_float_matrix(X, "X", n_columns=self.means_.shape[1])
        return X @ self.coef_.T + self.intercept_

    def predict(self, X) -> np.ndarray:
        """Predicted class labels, shape (n_samples,).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
