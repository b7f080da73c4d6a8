"""The package logger ``emtl_stream``.

Every module logs through ``logger`` (lazy ``%s`` arguments, never ``print``).
The level comes from ``EMTL_LOG_LEVEL`` (default ``WARNING``) or :func:`set_log_level`.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("emtl_stream")


def _init_logger() -> None:
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(os.environ.get("EMTL_LOG_LEVEL", "WARNING").upper())


def set_log_level(level: str | int) -> None:
    """Set the package log level.

    Parameters
    ----------
    level : str or int
        A :mod:`logging` level name (``"INFO"``) or number.
    """
    logger.setLevel(level.upper() if isinstance(level, str) else level)


def add_file_handler(path: str) -> logging.Handler:
    """Also write the package log to ``path``; returns the handler.

    Parameters
    ----------
    path : str
        The log file (appended to).
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return handler


_init_logger()
