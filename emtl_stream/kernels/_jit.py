"""The single place for numba options.

Every kernel in :mod:`emtl_stream.kernels` is decorated with :func:`kernel`, never
with a bare ``numba.njit``; ``tests/test_layout.py`` fails on a hard-coded
``fastmath=`` anywhere else.

Why these choices
-----------------
* ``numba.njit`` is nopython mode (numba 0.59+ warns if ``nopython`` is passed
  again). ``nogil``: kernels run inside the daemon's fit worker thread; the GIL is
  released so a fit never stalls the acquisition loop.
* ``cache=True``: a daemon must not pay compile time at every start. numba's cache
  freezes module globals at compile time and does not see edits to other files,
  so these options are import-time constants, never runtime configuration.
* ``FASTMATH_FLAGS`` leaves out ``nnan`` and ``ninf``: with them LLVM may assume
  that no NaN/inf exists and delete the very guards that catch bad samples.
* The array-type strings below (:data:`F1`, :data:`F2`, ...) are the one spelling of
  the eager signatures every kernel module composes, so a layout change (say,
  accepting read-only arrays) is made here once.
"""

from __future__ import annotations

import numba

#: LLVM fast-math flags allowed in kernels (no ``nnan``/``ninf``, see module docstring).
FASTMATH_FLAGS = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: C-contiguous float64 arrays of 1, 2 and 3 dimensions (eager-signature spelling).
F1 = "float64[::1]"
F2 = "float64[:, ::1]"
F3 = "float64[:, :, ::1]"
#: C-contiguous int64 and boolean vectors.
I1 = "int64[::1]"
B1 = "boolean[::1]"

#: Options shared by every kernel.
JIT_OPTIONS = dict(cache=True, nogil=True, fastmath=set(FASTMATH_FLAGS))


def kernel(signature=None):
    """Decorate a pure array function as a cached nopython (``njit``) kernel.

    Parameters
    ----------
    signature : str or list of str, optional
        Eager numba signature(s). Giving one compiles (or loads from the cache)
        at import time of the kernel's module, so warm-up is explicit.

    Returns
    -------
    decorator : callable
    """
    if signature is None:
        return numba.njit(**JIT_OPTIONS)
    return numba.njit(signature, **JIT_OPTIONS)
