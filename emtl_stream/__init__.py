"""emtl_stream: real-time EM transfer-learning calibration for myoelectric prostheses.

Public names are imported lazily: ``import emtl_stream`` opens no socket and
compiles no kernel.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC = {
    "LabelledGMM": "emtl_stream.model.gmm",
    "GMLVQ": "emtl_stream.model.lvq",
    "LGMLVQ": "emtl_stream.model.lvq",
    "TransferEM": "emtl_stream.model.transfer",
    "SourceComponents": "emtl_stream.model.source",
    "Client": "emtl_stream.io.client",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'emtl_stream' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
