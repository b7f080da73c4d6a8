"""Plain references for daemon/calibration.py: brute-force schedule and burst checks."""

from __future__ import annotations

import numpy as np


def schedule_table(classes, seconds, reps, lead, rest):
    """(kind, label, start, end, record_start) rows, written out by hand-rolled loops."""
    rows, t = [], 0.0
    first = True
    for _ in range(reps):
        for c in classes:
            if not first and rest > 0:
                rows.append(("rest", "rest", t, t + rest, None))
                t += rest
            first = False
            rows.append(("class", c, t, t + lead + seconds, t + lead))
            t += lead + seconds
    return rows


def label_by_sampling(rows, t, window_s, n=201):
    """Label of the window [t - window_s, t] by checking n points inside it."""
    pts = np.linspace(t - window_s, t, n)
    labels = set()
    for p in pts:
        hit = None
        for kind, label, start, end, rec in rows:
            if kind == "class" and rec - 1e-9 <= p <= end + 1e-9:
                hit = label
        labels.add(hit)
    return labels.pop() if len(labels) == 1 else None
