"""Start maps for an armband rotated between electrodes, per kind of feature.

A rotation of ``k + f`` electrode spacings mixes every electrode's raw signal with its
ring neighbour's, ``x'_c = (1 - f) x_{c-k} + f x_{c-k-1}``. What that does to a window's
features depends on the feature:

* **Amplitude features** (MAV, WL, RMS): the mixed amplitude is close to the mix of the
  amplitudes, so the map back is the sharpening ridge inverse ``S(θ)`` of the ring
  interpolation (:func:`~emtl_stream.model.transfer.rotation_inverse`). But two
  neighbouring electrodes are only partly correlated (correlation ρ), so the mix is
  also *weaker*: for equal amplitudes by ``sqrt((1-f)² + f² + 2 f (1-f) ρ)``.
  :func:`blur_gain` undoes that.
* **Count features** (zero crossings, slope sign changes): the count of a mixed signal
  is close to the mix of the counts and its level does not fall, so the map back is the
  plain back-interpolation ``R(θ)ᵀ`` (nothing to sharpen, no gain).

Measured on the CIIL electrode-shift recordings with a virtual rotation (channel maps
fitted by least squares on windows paired before and after it, docs/evaluation.md): the
amplitude gain on top of ``S(θ)`` is 1.16 ± 0.02 at a quarter spacing and 1.22 ± 0.03
at half a spacing over 18 subjects (ρ ≈ 0.32 from either), and the fitted map of ZC and
SSC at half a spacing averages the two neighbours (0.45, 0.46) with no negative lobes.
"""

from __future__ import annotations

import numpy as np

#: Correlation of the raw EMG of two neighbouring electrodes behind :func:`blur_gain`
#: (0.31 from the quarter-spacing gain, 0.33 from the half-spacing one; see the module
#: docstring).
NEIGHBOUR_CORRELATION = 0.32

#: Feature names whose value is a count: mapped back by plain interpolation.
COUNT_FEATURES = ("zc", "ssc")


def count_types(feature_names) -> tuple[int, ...]:
    """Return the indices of the count features among a channel's feature types.

    Parameters
    ----------
    feature_names : sequence of str
        The feature types of one channel, in column order (channel-major features).

    Returns
    -------
    tuple of int
    """
    return tuple(i for i, name in enumerate(feature_names) if str(name).lower() in
                 COUNT_FEATURES)


def blur_gain(fraction: float, rho: float = NEIGHBOUR_CORRELATION) -> float:
    """Undo the amplitude lost by mixing two equally strong signals of correlation ``rho``.

    Parameters
    ----------
    fraction : float
        f of the rotation (its part between electrodes; any real, taken modulo 1).
    rho : float
        Correlation of the two signals, in [-1, 1].

    Returns
    -------
    float
        ``1 / sqrt((1-f)² + f² + 2 f (1-f) ρ)``; 1 at a whole electrode.
    """
    f = float(fraction) % 1.0
    return float(1.0 / np.sqrt((1.0 - f) ** 2 + f ** 2 + 2.0 * f * (1.0 - f) * rho))


def rotation_prior(n: int, n_channels: int, rotation: float, ridge: float,
                   counts=(), rho: float = NEIGHBOUR_CORRELATION) -> np.ndarray:
    """Build the map back to the source for a target rotated by ``rotation`` spacings.

    Rows of a count type (``row % (n // n_channels)`` in ``counts``) are those of
    ``R(θ)ᵀ``; the other rows are those of ``blur_gain(θ) · S(θ)``. For a whole-electrode
    rotation k both are the roll ``R_{-k}`` (``S`` up to its ridge factor 1/(1+ε)).

    Parameters
    ----------
    n : int
        Features (n_channels × feature types, channel-major).
    n_channels : int
    rotation : float
        θ in spacings.
    ridge : float
        ε of ``S(θ) = (RᵀR + εI)⁻¹Rᵀ``.
    counts : sequence of int
        Count feature types (:func:`count_types`).
    rho : float
        Neighbour correlation of :func:`blur_gain`.

    Returns
    -------
    ndarray of shape (n, n)
    """
    from .transfer import ring_rotation_matrix, rotation_inverse

    H = blur_gain(rotation, rho) * rotation_inverse(n, n_channels, rotation, ridge)
    if len(counts):
        rows = np.isin(np.arange(n) % (n // n_channels), np.asarray(counts, dtype=np.int64))
        H[rows] = ring_rotation_matrix(n, n_channels, rotation).T[rows]
    return H
