"""Window bookkeeping on absolute sample counters."""

from __future__ import annotations

from .._checks import ensure_float, ensure_int


def ms_to_samples(ms: float, fs: float, name: str = "window_ms") -> int:
    """Convert ``ms`` milliseconds at ``fs`` Hz to a sample count (rounded, at least 1).

    The one conversion from a duration to a sample count: the live pipeline, the
    offline featuriser, the warm-up, the replayer's chunks and the evaluations all
    use it, so they cut the same windows. ``ms * fs / 1000`` is rounded to the
    nearest integer, halves to even (Python's :func:`round`): 12.5 ms at 200 Hz
    (2.5 samples) is 2 samples, 17.5 ms (3.5) is 4.

    Parameters
    ----------
    ms : float
        Duration in milliseconds, > 0.
    fs : float
        Sampling rate in Hz, > 0.
    name : str
        Name of the setting, for the error message.

    Returns
    -------
    int
        ``round(ms * fs / 1000)``, at least 1.

    Raises
    ------
    ValueError
        If that is less than one sample.
    """
    ms = ensure_float(ms, name, minimum=0.0, strict_min=True)
    fs = ensure_float(fs, "fs", minimum=0.0, strict_min=True)
    n = int(round(ms * fs / 1000.0))
    if n < 1:
        raise ValueError(f"{name}={ms} ms is less than one sample at fs={fs} Hz; "
                         f"use at least {1000.0 / fs:.3g} ms.")
    return n


class Windower:
    """Emits each window of ``window`` samples, every ``step`` samples, exactly once.

    The first window is ``[0, window)``, then ``[step, step + window)``, ... . After
    :meth:`restart` the next window starts at the given counter, so no window
    straddles a gap or a reconnect.

    Parameters
    ----------
    window : int
        Window length in samples.
    step : int
        Hop between window starts in samples.
    """

    def __init__(self, window: int, step: int):
        self.window = ensure_int(window, "window", minimum=1)
        self.step = ensure_int(step, "step", minimum=1)
        self.next_start = 0

    def ready(self, n_written: int) -> list[tuple[int, int]]:
        """Windows complete once ``n_written`` samples exist, not emitted before.

        Parameters
        ----------
        n_written : int
            Samples written so far (the ring buffer's counter).

        Returns
        -------
        list of (start, stop)
            Absolute counters, ``stop - start == window``, in increasing order.
        """
        out = []
        while self.next_start + self.window <= n_written:
            out.append((self.next_start, self.next_start + self.window))
            self.next_start += self.step
        return out

    def restart(self, at_counter: int) -> None:
        """Start the next window at ``at_counter``.

        Parameters
        ----------
        at_counter : int
            Counter of the first sample after a gap or a reconnect.
        """
        self.next_start = ensure_int(at_counter, "at_counter", minimum=0)
