"""The source model as transfer EM sees it: a labelled Gaussian mixture.

Every source classifier (:class:`~emtl_stream.model.gmm.LabelledGMM`, the LVQ
models through the scaling trick) hands transfer EM a :class:`SourceComponents`.
It holds plain arrays only, so it saves to ``.npz`` without pickle and feeds numba
kernels directly.

Conventions (scikit-learn's, so its formulas can be used as oracles):

* ``means[k]`` is μ_k, shape (m,).
* ``prec_factor[k]`` is a matrix P_k with Λ_k = P_k P_kᵀ, so the squared
  Mahalanobis distance of z is ``‖(z − μ_k) @ P_k‖²``. P_k need not be triangular.
* ``log_det_prec[k]`` = log det Λ_k (given explicitly so a rank-deficient LVQ
  metric can carry a clipped value).
* ``log_label_given_comp[l, k]`` = log ρ_{l,k} = log P(y = classes[l] | k), −inf where
  a component cannot carry the label (crisp labels).
* ``shared_precision`` is True when all Λ_k are equal; transfer EM then uses the
  closed-form shared M-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError

#: log(2π), the Gaussian normalising constant per dimension (the one definition in model/).
LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True, eq=False)
class SourceComponents:
    """Labelled-GMM parameters in the form the transfer kernels consume.

    Attributes
    ----------
    means : ndarray of shape (n_components, n_source_features)
    prec_factor : ndarray of shape (n_components, n_source_features, n_source_features)
    log_det_prec : ndarray of shape (n_components,)
    log_weights : ndarray of shape (n_components,)
    log_label_given_comp : ndarray of shape (n_classes, n_components)
    classes : ndarray of shape (n_classes,)
        Class names (strings) or integer labels, in the order of predictions.
    shared_precision : bool
    """

    means: np.ndarray
    prec_factor: np.ndarray
    log_det_prec: np.ndarray
    log_weights: np.ndarray
    log_label_given_comp: np.ndarray
    classes: np.ndarray
    shared_precision: bool

    def __post_init__(self):  # noqa: D105
        f64 = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
        object.__setattr__(self, "means", f64(self.means))
        object.__setattr__(self, "prec_factor", f64(self.prec_factor))
        object.__setattr__(self, "log_det_prec", f64(self.log_det_prec))
        object.__setattr__(self, "log_weights", f64(self.log_weights))
        object.__setattr__(self, "log_label_given_comp", f64(self.log_label_given_comp))
        object.__setattr__(self, "classes", np.asarray(self.classes))
        K, m = self.means.shape
        if self.prec_factor.shape != (K, m, m):
            raise ModelError(
                f"prec_factor must have shape {(K, m, m)}, got {self.prec_factor.shape}.")
        if self.log_det_prec.shape != (K,) or self.log_weights.shape != (K,):
            raise ModelError("log_det_prec and log_weights must have one entry per component.")
        L = len(self.classes)
        if self.log_label_given_comp.shape != (L, K):
            raise ModelError(
                f"log_label_given_comp must have shape {(L, K)}, got "
                f"{self.log_label_given_comp.shape}."
            )
        for name in ("means", "prec_factor", "log_det_prec", "log_weights"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ModelError(f"source model {name} contains NaN or inf.")

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        """Source feature dimension m."""
        return self.means.shape[1]

    @property
    def precisions(self) -> np.ndarray:
        """Λ_k = P_k P_kᵀ, shape (n_components, m, m)."""
        return np.einsum("kij,klj->kil", self.prec_factor, self.prec_factor)

    def log_gauss(self, Z: np.ndarray) -> np.ndarray:
        """Log N(z_j | μ_k, Λ_k⁻¹) for every row and component, plain numpy.

        Parameters
        ----------
        Z : ndarray of shape (n_samples, m)

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        Z = np.asarray(Z, dtype=np.float64)
        out = np.empty((Z.shape[0], self.n_components))
        for k in range(self.n_components):
            y = (Z - self.means[k]) @ self.prec_factor[k]
            out[:, k] = -0.5 * (self.n_features * LOG_2PI + np.einsum("ij,ij->i", y, y))
            out[:, k] += 0.5 * self.log_det_prec[k]
        return out

    def to_arrays(self) -> dict:
        """Plain-array dict for ``np.savez`` (no pickle needed)."""
        return {
            "means": self.means,
            "prec_factor": self.prec_factor,
            "log_det_prec": self.log_det_prec,
            "log_weights": self.log_weights,
            "log_label_given_comp": self.log_label_given_comp,
            "classes": (self.classes.astype(str) if self.classes.dtype.kind in "OU"
                        else self.classes),
            "shared_precision": np.asarray(bool(self.shared_precision)),
        }

    @classmethod
    def from_arrays(cls, arrays) -> "SourceComponents":
        """Inverse of :meth:`to_arrays`.

        Parameters
        ----------
        arrays : mapping of str to ndarray
            The dict :meth:`to_arrays` returns (or an opened ``.npz``).

        Returns
        -------
        SourceComponents
        """
        return cls(
            means=arrays["means"],
            prec_factor=arrays["prec_factor"],
            log_det_prec=arrays["log_det_prec"],
            log_weights=arrays["log_weights"],
            log_label_given_comp=arrays["log_label_given_comp"],
            classes=np.asarray(arrays["classes"]),
            shared_precision=bool(np.asarray(arrays["shared_precision"])),
        )
