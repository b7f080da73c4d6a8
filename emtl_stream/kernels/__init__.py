"""numba kernels: pure functions on contiguous float64 arrays; no I/O, no logging.

Each kernel trusts its inputs. The public, validating wrappers live in
:mod:`emtl_stream.model` and :mod:`emtl_stream.pipeline`.
"""
