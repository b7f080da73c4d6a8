"""The BLAS thread count of the serving process.

OpenBLAS parks its worker threads in a busy wait after every call it spreads over
them. The daemon's per-window work (a 256 × 256 map at 64 channels, the shift
watch) is just large enough to be spread, so at 64 ch × 2 kHz a second BLAS thread
spun for 18 % of a core next to a loop thread of 9 %; with one BLAS thread the whole
process used 6.7 % (docs/benchmarks.md). :func:`limit_blas_threads` sets the count
through OpenBLAS's own ``*_set_num_threads`` in the libraries already loaded (the
one numpy and scipy bundle), with no new dependency.
"""

from __future__ import annotations

import ctypes
import os

from ..logs import logger

#: BLAS threads while the daemon serves: per-window work is small, and a fit is one
#: more thread beside the loop on a 2-core board.
SERVING_BLAS_THREADS = 1
#: Environment variables through which a user chooses the thread count; when
#: one is set the daemon leaves BLAS alone.
USER_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_")


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux ``/proc``)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in p)


def limit_blas_threads(n: int = SERVING_BLAS_THREADS) -> int:
    """Set the thread count of every loaded OpenBLAS to ``n``.

    Parameters
    ----------
    n : int
        Threads (at least 1).

    Returns
    -------
    int
        How many libraries were set (0 when a user variable is set, when numpy uses
        another BLAS, or off Linux).
    """
    if any(os.environ.get(v) for v in USER_THREAD_VARIABLES):
        return 0
    import numpy  # noqa: F401  (loads the bundled OpenBLAS)

    done = 0
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(max(1, int(n))))
                done += 1
                break
    logger.debug("BLAS threads set to %d in %d librar(y/ies)", n, done)
    return done


def blas_threads() -> list[int]:
    """Return the thread count of every loaded OpenBLAS (for tests and diagnostics)."""
    out = []
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                     "scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
            getter = getattr(lib, name, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                out.append(int(getter()))
                break
    return out
