"""Exception hierarchy of emtl_stream.

Argument errors use the built-in ``ValueError``/``TypeError`` (through
:mod:`emtl_stream._checks`); runtime domain failures derive from :class:`EmtlError`
so that callers can catch them as a family.
"""

from __future__ import annotations


class EmtlError(Exception):
    """Root of every emtl_stream runtime error."""


class ConfigError(EmtlError, ValueError):
    """A configuration file, key or value is invalid; the message names the key."""


class StreamError(EmtlError):
    """Problem with an input stream."""


class StreamNotFound(StreamError):
    """No LSL stream matched the query within the timeout."""


class StreamLost(StreamError):
    """A connected stream stopped delivering samples."""


class ChannelMismatch(StreamError, ValueError):
    """A stream's channel count, rate or format does not match the model."""


class CalibrationError(EmtlError, ValueError):
    """A calibration burst cannot give a usable transfer map."""


class BurstTooShort(CalibrationError):
    """Too few windows (in total or for a class) in a calibration burst."""


class DegenerateBurst(CalibrationError):
    """A calibration burst is non-finite, constant or otherwise uninformative."""


class FitCancelled(CalibrationError):
    """A fit was stopped by request (its ``should_stop`` hook); its result is dropped."""


class ProtocolError(EmtlError, ValueError):
    """A wire message is malformed, too large or of an unknown version."""


class ModelError(EmtlError, ValueError):
    """A model file or model parameters are invalid."""


class TransferConvergenceWarning(UserWarning):
    """Transfer EM stopped at ``max_iter`` before reaching ``tol``."""


class FitConvergenceWarning(UserWarning):
    """A source-model fit stopped at ``max_iter`` before reaching ``tol``."""
