"""The source-model file: features + source model + classes + stream shape in one ``.npz``.

A :class:`SourceBundle` is everything the daemon needs to classify a stream and to
run transfer EM: the feature settings and the band-pass/notch filter (so the live
features equal the training features), the stream it was trained on (channel count,
rate) and the source model
as :class:`~emtl_stream.model.source.SourceComponents`. It is written atomically
and holds plain arrays plus one JSON string; ``np.load(allow_pickle=False)`` reads it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .._atomic import atomic_write, model_file_error, read_model_npz
from ..model.source import SourceComponents
from ..model.rotation import count_types

BUNDLE_FORMAT = "emtl_stream.source_bundle/1"
_WHAT = "an emtl_stream source model"


@dataclass
class SourceBundle:
    """A trained source model with the feature settings it was trained with.

    Attributes
    ----------
    components : SourceComponents
        The source classifier as a labelled Gaussian mixture (means (K, m), ...).
    features : dict
        ``FeatureExtractor.to_dict()`` of the training features.
    window_ms, step_ms : float
    n_channels : int
    fs : float
        Nominal sampling rate of the training stream (Hz).
    meta : dict
        Free-form provenance (model type, training files, created time, ...).
    filter : dict or None
        The filter the training windows went through, as :func:`filter_spec` gives it
        (``{"bandpass": [lo, hi] or None, "notch": hz or None, "order": int}``); None
        for a bundle written before filters were recorded (the caller then decides,
        see :meth:`make_filter`).
    """

    components: SourceComponents
    features: dict
    window_ms: float
    step_ms: float
    n_channels: int
    fs: float
    meta: dict = field(default_factory=dict)
    filter: dict | None = None

    def __post_init__(self):
        if self.filter is not None:
            self.filter = filter_spec(self.filter.get("bandpass"), self.filter.get("notch"),
                                      self.filter.get("order", DEFAULT_FILTER_ORDER))

    @property
    def classes(self) -> list[str]:
        """Class names in prediction order."""
        return [str(c) for c in self.components.classes]

    def make_extractor(self):
        """Make a fresh :class:`~emtl_stream.pipeline.features.FeatureExtractor` (live)."""
        from ..pipeline.features import FeatureExtractor

        return FeatureExtractor.from_dict(self.features)

    def make_filter(self, n_channels: int, fs: float, fallback: dict | None = None):
        """Return the streaming filter the training windows went through, or None for none.

        Parameters
        ----------
        n_channels : int
        fs : float
            Rate of the live stream (Hz); equal to :attr:`fs` for a stream the model fits.
        fallback : dict, optional
            A :func:`filter_spec` used only when the bundle has no record (written
            before filters were recorded), e.g. ``filter_spec_from_config(config.features)``.

        Returns
        -------
        StreamingFilter or None
        """
        return make_filter(self.filter if self.filter is not None else fallback, n_channels, fs)

    def save(self, path) -> Path:
        """Write atomically to ``path`` (temp file, fsync, rename, folder fsync); returns it.

        Parameters
        ----------
        path : str or Path
            Destination ``.npz``.
        """
        path = Path(path)
        header = {
            "format": BUNDLE_FORMAT,
            "features": self.features,
            "window_ms": self.window_ms,
            "step_ms": self.step_ms,
            "n_channels": self.n_channels,
            "fs": self.fs,
            "classes": self.classes,
            "meta": self.meta,
            "filter": self.filter,
        }
        arrays = {f"components__{k}": v for k, v in self.components.to_arrays().items()}
        arrays["classes"] = np.asarray(self.classes, dtype=str)
        arrays["header_json"] = np.asarray(json.dumps(header))
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path) -> "SourceBundle":
        """Read a bundle written by :meth:`save`; ``ModelError`` naming the path if invalid.

        Parameters
        ----------
        path : str or Path
            A ``.npz`` written by :meth:`save`.
        """
        path = Path(path)
        z = read_model_npz(path, _WHAT)
        try:
            header = json.loads(str(z["header_json"]))
            if header.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {BUNDLE_FORMAT!r}")
            comp = {k[len("components__"):]: v for k, v in z.items()
                    if k.startswith("components__")}
            comp["classes"] = np.asarray(header["classes"])
            components = SourceComponents.from_arrays(comp)
            return cls(components=components, features=header["features"],
                       window_ms=float(header["window_ms"]), step_ms=float(header["step_ms"]),
                       n_channels=int(header["n_channels"]), fs=float(header["fs"]),
                       meta=header.get("meta", {}), filter=header.get("filter"))
        except (ModelError, ValueError, KeyError, TypeError) as exc:
            raise model_file_error(path, _WHAT, exc) from exc


DEFAULT_FILTER_ORDER = 4  # StreamingFilter's default Butterworth order


def filter_spec(bandpass=None, notch=None, order: int = DEFAULT_FILTER_ORDER) -> dict:
    """Build a validated, JSON-able filter description for :class:`SourceBundle`.

    Parameters
    ----------
    bandpass : (float, float) or None
        Pass band in Hz as configured (``StreamingFilter`` clips it to the rate).
    notch : float or None
        Notch centre in Hz; 0 or None for no notch.
    order : int
        Butterworth order of the band-pass.

    Returns
    -------
    dict
        ``{"bandpass": [lo, hi] or None, "notch": float or None, "order": int}``.
    """
    if bandpass is not None and len(bandpass) == 0:
        bandpass = None
    if bandpass is not None:
        if len(bandpass) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         for v in bandpass) or not 0 < bandpass[0] < bandpass[1]:
            raise ValueError(f"filter bandpass must be [low, high] Hz with 0 < low < high, got "
                             f"{bandpass!r}.")
        bandpass = [float(bandpass[0]), float(bandpass[1])]
    if notch is not None and (isinstance(notch, bool) or not isinstance(notch, (int, float))
                              or notch < 0):
        raise ValueError(f"filter notch must be a frequency >= 0 Hz or None, got {notch!r}.")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 16:
        raise ValueError(f"filter order must be an integer in [1, 16], got {order!r}.")
    return {"bandpass": bandpass, "notch": float(notch) if notch else None, "order": order}


def make_filter(spec: dict | None, n_channels: int, fs: float):
    """Build the :class:`~emtl_stream.pipeline.filters.StreamingFilter` of a filter spec.

    Parameters
    ----------
    spec : dict or None
        A :func:`filter_spec` result.
    n_channels : int
        Electrodes of the stream.
    fs : float
        Sampling rate (Hz).

    Returns
    -------
    StreamingFilter or None
        ``None`` for ``spec=None`` or a spec that filters nothing.
    """
    if spec is None:
        return None
    spec = filter_spec(spec.get("bandpass"), spec.get("notch"),
                       spec.get("order", DEFAULT_FILTER_ORDER))
    if spec["bandpass"] is None and spec["notch"] is None:
        return None
    from ..pipeline.filters import StreamingFilter

    return StreamingFilter(fs, n_channels, bandpass=spec["bandpass"], notch=spec["notch"],
                           order=spec["order"])


def filter_spec_from_config(features) -> dict:
    """:func:`filter_spec` of a ``[features]`` section (``bandpass``, ``notch``).

    Parameters
    ----------
    features : FeaturesConfig
        The ``[features]`` config section.
    """
    return filter_spec(list(features.bandpass) or None, features.notch or None)


def fit_source_model(X, y, kind: str = "lgmm", covariance_type: str = "tied",
                     n_components_per_class: int = 1, random_state: int = 0,
                     should_stop=None):
    """Fit a source classifier on features and return it (it has ``to_components()``).

    Parameters
    ----------
    X : ndarray of shape (n_windows, n_features)
    y : array-like of shape (n_windows,)
        Class names.
    kind : {"lgmm", "gmlvq", "lgmlvq"}
        A labelled Gaussian mixture, or (localised) generalised matrix LVQ.
    covariance_type : str
        ``LabelledGMM`` only: one of ``[model] covariance_type``'s choices (``"tied"``, ...).
    n_components_per_class : int
        Mixture components (or prototypes) per class.
    random_state : int
        Seed of the initialisation.
    should_stop : callable, optional
        Asked every iteration; True raises :class:`~emtl_stream.errors.FitCancelled`.
    """
    if kind == "lgmm":
        from ..model.gmm import LabelledGMM

        return LabelledGMM(n_components_per_class=n_components_per_class,
                           covariance_type=covariance_type,
                           random_state=random_state).fit(X, y, should_stop=should_stop)
    if kind in ("gmlvq", "lgmlvq"):
        from ..model import lvq

        cls = lvq.GMLVQ if kind == "gmlvq" else lvq.LGMLVQ
        return cls(prototypes_per_class=n_components_per_class,
                   random_state=random_state).fit(X, y, should_stop=should_stop)
    raise ValueError(f"model kind must be one of ['gmlvq', 'lgmlvq', 'lgmm'], got {kind!r}.")


def make_bundle(model, extractor, window_ms: float, step_ms: float, n_channels: int, fs: float,
                filter_spec: dict | None = None, **meta) -> SourceBundle:
    """Wrap a fitted source model and its feature extractor into a :class:`SourceBundle`.

    ``filter_spec`` (from :func:`filter_spec`) records the filter the training windows
    went through; pass ``filter_spec()`` for "unfiltered". None leaves it unrecorded.

    Parameters
    ----------
    model : LabelledGMM, GMLVQ or LGMLVQ
        A fitted source model (it has ``to_components()``).
    extractor : FeatureExtractor
        The extractor the training features came from.
    window_ms, step_ms : float
        Window length and hop of the training features.
    n_channels : int
        Electrodes of the training stream.
    fs : float
        Sampling rate of the training stream (Hz).
    filter_spec : dict, optional
        See above.
    **meta
        Stored in the bundle's metadata (``created`` and ``model_type`` are filled in).
    """
    meta.setdefault("created", time.time())
    meta.setdefault("model_type", type(model).__name__)
    return SourceBundle(components=model.to_components(), features=extractor.to_dict(),
                        window_ms=float(window_ms), step_ms=float(step_ms),
                        n_channels=int(n_channels), fs=float(fs), meta=meta,
                        filter=filter_spec)


def train_bundle(X, y, extractor, window_ms: float, step_ms: float, n_channels: int, fs: float,
                 *, kind: str = "lgmm", covariance_type: str = "tied",
                 n_components_per_class: int = 1, filter_spec: dict | None = None,
                 speed_kwargs: dict | None = None, should_stop=None, **meta):
    """Fit a source model on labelled windows and bundle it with what serving needs.

    Besides the model, the bundle carries the shift detector's reference level from
    held-out windows (a model refitted without the last share of each class, so a
    daemon started on an already-shifted arm notices) and, with ``speed_kwargs``, the
    proportional-speed calibration of the same windows. The command line's ``train``
    and the daemon's prompted training session both build their models here.

    Parameters
    ----------
    X : ndarray of shape (n_windows, n_features)
        Training windows, featurised with ``extractor``, in stream order.
    y : array-like of shape (n_windows,)
        Class name of each window.
    extractor : FeatureExtractor
    window_ms, step_ms : float
    n_channels : int
    fs : float
    kind, covariance_type, n_components_per_class
        ``[model]`` settings (see :func:`fit_source_model`).
    filter_spec : dict, optional
        The filter the windows went through (see :func:`make_bundle`).
    speed_kwargs : dict, optional
        :func:`~emtl_stream.model.speed.speed_kwargs` of the config; None: no speed.
    should_stop : callable, optional
        Asked every iteration of both fits; True raises
        :class:`~emtl_stream.errors.FitCancelled`.
    **meta
        Extra metadata stored in the bundle.

    Returns
    -------
    bundle : SourceBundle
    model : object
        The fitted source model (``predict`` for a training accuracy).
    note : str or None
        Why the bundle carries no speed calibration (e.g. its measure needs a feature
        the model lacks), for the caller to report; None otherwise.
    """
    from .shift import heldout_reference

    y = np.asarray(y)

    def fit(Xa, ya):  # the shipped model's settings, for the held-out refit too
        return fit_source_model(Xa, ya, kind=kind, covariance_type=covariance_type,
                                n_components_per_class=n_components_per_class,
                                should_stop=should_stop)

    model = fit(X, y)
    bundle = make_bundle(model, extractor, window_ms, step_ms, n_channels, fs,
                         filter_spec=filter_spec, shift_reference=heldout_reference(fit, X, y),
                         **meta)
    note = None
    if speed_kwargs is not None:
        from ..model.speed import calibrate_bundle_speed

        try:
            bundle.meta["speed"] = calibrate_bundle_speed(bundle, X, y, **speed_kwargs)
        except ValueError as exc:
            note = f"no proportional speed in this model: {exc}"
    return bundle, model, note


def ring_search_channels(config, n_channels: int, n_features: int | None = None) -> int | None:
    """Decide whether transfer EM searches channel rolls, and over how many electrodes.

    The one owner of the roll-search policy: the daemon's recalibrations, its
    warm-up and the offline evaluations all ask here (through
    :func:`transfer_settings`), so an evaluation runs what the daemon runs.

    Parameters
    ----------
    config : Config
        Reads ``[stream] ring`` (the electrodes form a ring) and ``[transfer]
        ring_search`` (start EM from every roll).
    n_channels : int
        Electrodes of the source model's stream.
    n_features : int, optional
        Features per window. A roll moves whole channel blocks, so the search needs
        ``n_features`` divisible by ``n_channels``; ``None``: assumed so.

    Returns
    -------
    int or None
        ``n_channels`` when the search is on, ``None`` when it is off.
    """
    if not (config.stream.ring and config.transfer.ring_search):
        return None
    if n_features is not None and int(n_features) % int(n_channels):
        return None
    return int(n_channels)


def transfer_settings(config, n_channels: int, *, n_features: int | None = None,
                      H_live=None) -> tuple[dict, int | None]:
    """TransferEM keyword arguments and ``ring_channels`` from one configuration.

    Without a roll search the map is unstructured (``structure="dense"``): the
    channel structure needs the electrode layout, which only the ring supplies.
    ``[transfer] shrink_to = "current"`` shrinks towards ``H_live``; without one
    (offline, warm-up) it means the identity.

    Parameters
    ----------
    config : Config
        The ``[stream]`` and ``[transfer]`` sections are read.
    n_channels : int
        Electrodes of the source model's stream.
    n_features : int, optional
        Features per window (see :func:`ring_search_channels`).
    H_live : ndarray of shape (m, m), optional
        The live map, the shrink target of ``shrink_to = "current"``.

    Returns
    -------
    kwargs : dict
        Keyword arguments of :class:`~emtl_stream.model.transfer.TransferEM`.
    ring_channels : int or None
        Its ``ring_channels`` argument, from :func:`ring_search_channels`.
    """
    if n_features is None and H_live is not None:
        n_features = np.shape(H_live)[1]
    ring = ring_search_channels(config, n_channels, n_features)
    t = config.transfer
    if t.shrink_to == "current" and H_live is not None:
        shrink = np.array(H_live, dtype=np.float64)
    else:
        shrink = t.shrink_to if t.shrink_to in ("identity", "zero") else "identity"
    kw = dict(kind=t.kind, bias=bool(t.bias), reg=float(t.reg), reg_scale=t.reg_scale,
              shrink_to=shrink, max_iter=int(t.max_iter), tol=float(t.tol),
              structure=t.structure if ring else "dense")
    if ring and t.rotation_search != "roll":  # only passed when asked: the default is unchanged
        kw["rotation_search"] = t.rotation_search
        kw["rotation_counts"] = count_types(config.features.names)
    if t.guard != "auto":  # "auto" leaves it to TransferEM (on with the continuous search)
        kw["guard"] = t.guard == "on"
    return kw, ring


def transfer_kwargs(config, n_channels: int) -> dict:
    """TransferEM keyword arguments alone: :func:`transfer_settings` without a live map.

    Parameters
    ----------
    config : Config
        The ``[stream]`` and ``[transfer]`` sections are read.
    n_channels : int
        Electrodes of the source model's stream.

    Returns
    -------
    dict
        Keyword arguments of :class:`~emtl_stream.model.transfer.TransferEM`.
    """
    return transfer_settings(config, n_channels)[0]
