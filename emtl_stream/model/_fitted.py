"""The one not-fitted check of the model estimators."""

from __future__ import annotations

from ..errors import ModelError


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
