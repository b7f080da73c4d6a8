"""Feature names and their integer codes: the one table the kernels and the pipeline share.

:data:`FEATURE_CODES` lists the feature names in code order (the code of a name is its
index); the ``CODE_*`` constants name those indices for the kernels' dispatch in
:func:`emtl_stream.kernels.features.window_features`.

Why module-level ints: numba freezes a global's value into the compiled (and cached)
kernel at compile time, so the codes must be import-time constants that never change
at run time; a new feature gets a new name appended at the end (cached kernels and
saved extractors keep meaning the same thing by the same code). This module imports
nothing and compiles nothing, so :mod:`emtl_stream.pipeline.features` reads the names
without loading a kernel.
"""

from __future__ import annotations

#: Feature names in kernel code order (the code of a name is its index).
FEATURE_CODES = (
    "mav", "rms", "logvar", "wl", "zc", "ssc", "wamp",
    "hjorth_activity", "hjorth_mobility", "hjorth_complexity", "ar",
    "mnf", "mdf", "log_mav", "log_wl",
)

CODE_MAV = FEATURE_CODES.index("mav")
CODE_RMS = FEATURE_CODES.index("rms")
CODE_LOGVAR = FEATURE_CODES.index("logvar")
CODE_WL = FEATURE_CODES.index("wl")
CODE_ZC = FEATURE_CODES.index("zc")
CODE_SSC = FEATURE_CODES.index("ssc")
CODE_WAMP = FEATURE_CODES.index("wamp")
CODE_HJORTH_ACTIVITY = FEATURE_CODES.index("hjorth_activity")
CODE_HJORTH_MOBILITY = FEATURE_CODES.index("hjorth_mobility")
CODE_HJORTH_COMPLEXITY = FEATURE_CODES.index("hjorth_complexity")
CODE_AR = FEATURE_CODES.index("ar")
CODE_MNF = FEATURE_CODES.index("mnf")
CODE_MDF = FEATURE_CODES.index("mdf")
CODE_LOG_MAV = FEATURE_CODES.index("log_mav")
CODE_LOG_WL = FEATURE_CODES.index("log_wl")
