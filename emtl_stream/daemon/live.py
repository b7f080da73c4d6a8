"""The live model: one immutable value, replaced by one assignment.

The loop thread reads ``daemon.live`` once per window and uses only that value,
so a swap (``daemon.live = new``) is atomic for every window: a window is
classified entirely with the old map or entirely with the new one. Nothing else
holds a copy of H or b.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def source_fingerprint(components) -> str:
    """sha256 over the arrays of a source model (hex, 16 characters).

    Two bundles with the same means, precisions, weights and label table get the
    same fingerprint; a map is only valid for the source model it was fitted for.

    Parameters
    ----------
    components : SourceComponents
    """
    h = hashlib.sha256()
    for name in ("means", "prec_factor", "log_det_prec", "log_weights", "log_label_given_comp"):
        a = np.ascontiguousarray(getattr(components, name), dtype=np.float64)
        h.update(name.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update("\x00".join(map(str, components.classes)).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class LiveModel:
    """What the daemon serves right now.

    Parameters
    ----------
    bundle : SourceBundle
        The source model with its feature settings.
    classifier : MappedClassifier
        Built from ``bundle.components``, ``H`` and ``b``.
    H : ndarray of shape (m, n)
    b : ndarray of shape (m,)
    version : int
        The map version in the state directory.
    fingerprint : str
        :func:`source_fingerprint` of ``bundle.components`` (recorded with every map).
    rotation : float or None
        The map's ring rotation relative to the source model, in electrode spacings
        (0 for the identity map; recorded with every map as ``map_rotation``); None
        when unknown (no ring, or a map stored without it).
    """

    bundle: object
    classifier: object
    H: np.ndarray
    b: np.ndarray
    version: int
    fingerprint: str
    rotation: float | None = None

    @classmethod
    def build(cls, bundle, H, b, version: int, fingerprint: str | None = None,
              rotation: float | None = None) -> "LiveModel":
        """Make the classifier for ``H``, ``b`` (read-only copies) and wrap everything.

        Parameters
        ----------
        bundle : SourceBundle
            The source model.
        H : ndarray of shape (m, m)
            The map.
        b : ndarray of shape (m,)
            The offset.
        version : int
            The map's version in the state store.
        fingerprint : str, optional
            The source model's fingerprint; default computed from ``bundle``.
        rotation : float, optional
            The map's ring rotation in electrode spacings (None: unknown).
        """
        from ..model.classify import MappedClassifier

        H = np.array(H, dtype=np.float64)
        b = np.array(b, dtype=np.float64).reshape(-1)
        H.flags.writeable = False
        b.flags.writeable = False
        clf = MappedClassifier(bundle.components, H, b)
        fp = fingerprint or source_fingerprint(bundle.components)
        rot = None if rotation is None else float(rotation)
        return cls(bundle, clf, H, b, int(version), fp, rot)

    def __post_init__(self):
        # the names once: the loop asks for one at every window
        object.__setattr__(self, "_labels", tuple(self.bundle.classes))

    @property
    def classes(self) -> list:
        """Class names in index order."""
        return list(self._labels)

    def label(self, index: int) -> str:
        """Name of the class at ``index`` (a prediction's index).

        Parameters
        ----------
        index : int
            In ``range(len(classes))``.
        """
        return self._labels[index]

    def with_map(self, H, b, version: int, rotation: float | None = None) -> "LiveModel":
        """Return the same source model with another map (for a swap or a rollback).

        Parameters
        ----------
        H : ndarray of shape (m, m)
            The new map.
        b : ndarray of shape (m,)
            The new offset.
        version : int
            The new map's version in the state store.
        rotation : float, optional
            Its ring rotation in electrode spacings (None: unknown).
        """
        return LiveModel.build(self.bundle, H, b, version, self.fingerprint, rotation)
