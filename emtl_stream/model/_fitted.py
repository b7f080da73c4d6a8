"""The one not-fitted check of the model estimators, and their stop-by-request check."""

from __future__ import annotations

from ..errors import FitCancelled, ModelError


def check_is_fitted(estimator, attribute: str, hint: str = "call fit(X, y) first") -> None:
    """Raise :class:`~emtl_stream.errors.ModelError` unless ``estimator`` has been fitted.

    Parameters
    ----------
    estimator : object
        The model (its class name goes into the message).
    attribute : str
        A fitted attribute (trailing underscore) that ``fit`` sets.
    hint : str
        What to do instead, appended to the message.

    Raises
    ------
    ModelError
        ``attribute`` is missing.
    """
    if not hasattr(estimator, attribute):
        raise ModelError(f"this {type(estimator).__name__} is not fitted yet; {hint}.")


def check_stop(should_stop, what: str) -> None:
    """Raise :class:`~emtl_stream.errors.FitCancelled` when ``should_stop()`` is true.

    Parameters
    ----------
    should_stop : callable or None
        The caller's hook (e.g. a cancel event's ``is_set``), asked once per iteration.
    what : str
        The fit, for the message ("transfer EM", "LabelledGMM", ...).
    """
    if should_stop is not None and should_stop():
        raise FitCancelled(f"{what} stopped by request")
