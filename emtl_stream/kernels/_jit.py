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
* Kernels with a signature compile it (or load it from the cache) on their first
  call, not at import, and then accept nothing else (as an eager signature would):
  a daemon compiles only the kernels its configuration calls (a tied source model
  never needs the per-component CG solvers, the largest compile), and the warm-up
  (``daemon/warmup.py``) makes those first calls before serving.
* The array-type strings below (:data:`F1`, :data:`F2`, ...) are the one spelling of
  the eager signatures every kernel module composes, so a layout change (say,
  accepting read-only arrays) is made here once.
"""

from __future__ import annotations

import numba
from numba.core.registry import CPUDispatcher

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


class _Kernel(CPUDispatcher):
    """A dispatcher that compiles its declared signatures at first use, then no other."""

    declared: tuple = ()

    def _compile_declared(self) -> None:
        if self.declared and self._can_compile:
            from numba.core import typeinfer

            with typeinfer.register_dispatcher(self):
                for sig in self.declared:
                    self.compile(sig)
            self.disable_compile()

    def _compile_for_args(self, *args, **kws):
        # a call from Python with no matching overload yet
        if self.declared and self._can_compile:
            self._compile_declared()
            return self  # numba calls the returned callable with the arguments
        return super()._compile_for_args(*args, **kws)

    def get_call_template(self, args, kws):
        # a call from another kernel being compiled
        self._compile_declared()
        return super().get_call_template(args, kws)


def kernel(signature=None):
    """Decorate a pure array function as a cached nopython (``njit``) kernel.

    Parameters
    ----------
    signature : str or list of str, optional
        Numba signature(s). They are compiled (or loaded from the cache) at the
        first call, and a call matching none of them is a ``TypeError``, as with an
        eager signature; without one, numba specialises on the argument types.

    Returns
    -------
    decorator : callable
    """
    if signature is None:
        return numba.njit(**JIT_OPTIONS)
    declared = (signature,) if isinstance(signature, str) else tuple(signature)

    def decorate(func):
        options = {k: v for k, v in JIT_OPTIONS.items() if k != "cache"}
        disp = _Kernel(py_func=func, locals={}, targetoptions={"nopython": True, **options})
        disp.declared = declared
        if JIT_OPTIONS["cache"]:
            disp.enable_caching()
        return disp

    return decorate
