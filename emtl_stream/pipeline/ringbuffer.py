"""A preallocated multichannel ring buffer addressed by absolute sample counters."""

from __future__ import annotations

import numpy as np

from .._checks import ensure_int


class RingBuffer:
    """Fixed-capacity store of the newest samples and their timestamps.

    Data are written through a write index into arrays allocated once (no
    ``np.roll``, no per-chunk allocation). Samples are addressed by their absolute
    counter: the k-th sample ever written has counter k, whatever the wraparound.

    Parameters
    ----------
    capacity : int
        Number of samples kept (the newest ``capacity``).
    n_channels : int

    Attributes
    ----------
    data : ndarray of shape (capacity, n_channels) float64
    timestamps : ndarray of shape (capacity,) float64
    n_written : int
        Total number of samples ever written.
    """

    def __init__(self, capacity: int, n_channels: int):
        self.capacity = ensure_int(capacity, "capacity", minimum=1)
        self.n_channels = ensure_int(n_channels, "n_channels", minimum=1)
        self.data = np.zeros((self.capacity, self.n_channels), dtype=np.float64)
        self.timestamps = np.zeros(self.capacity, dtype=np.float64)
        self.n_written = 0

    @property
    def oldest(self) -> int:
        """Counter of the oldest sample still held."""
        return max(0, self.n_written - self.capacity)

    def write(self, samples, timestamps) -> None:
        """Append ``samples`` with their ``timestamps``.

        ``n`` may exceed the free space or the capacity: the oldest samples are
        overwritten and only the newest ``capacity`` are kept.

        Parameters
        ----------
        samples : array-like of shape (n, n_channels)
        timestamps : array-like of shape (n,)
        """
        samples = np.asarray(samples)
        timestamps = np.asarray(timestamps)
        if samples.ndim != 2 or samples.shape[1] != self.n_channels:
            raise ValueError(f"samples must have shape (n, {self.n_channels}), "
                             f"got {samples.shape}.")
        n = samples.shape[0]
        if timestamps.shape != (n,):
            raise ValueError(f"timestamps must have shape ({n},) to match samples, "
                             f"got {timestamps.shape}.")
        if n == 0:
            return
        skip = max(0, n - self.capacity)  # samples that would be overwritten at once
        pos = (self.n_written + skip) % self.capacity
        left = n - skip
        first = min(left, self.capacity - pos)
        self.data[pos:pos + first] = samples[skip:skip + first]
        self.timestamps[pos:pos + first] = timestamps[skip:skip + first]
        if first < left:
            self.data[:left - first] = samples[skip + first:]
            self.timestamps[:left - first] = timestamps[skip + first:]
        self.n_written += n

    def read(self, start: int, stop: int):
        """Copy of the samples with counters ``start <= k < stop``.

        Parameters
        ----------
        start, stop : int
            Absolute sample counters; the range must still be held.

        Returns
        -------
        data : ndarray of shape (stop - start, n_channels) float64
        timestamps : ndarray of shape (stop - start,) float64

        Raises
        ------
        ValueError
            If the range is reversed, already overwritten or not yet written.
        """
        if stop < start:
            raise ValueError(f"read range is reversed: start={start} > stop={stop}.")
        if start < self.oldest:
            raise ValueError(f"samples from {start} were overwritten (oldest held: {self.oldest}, "
                             f"capacity {self.capacity}); read sooner or enlarge the buffer.")
        if stop > self.n_written:
            raise ValueError(f"samples up to {stop} are not written yet "
                             f"(n_written={self.n_written}).")
        n = stop - start
        out = np.empty((n, self.n_channels), dtype=np.float64)
        ts = np.empty(n, dtype=np.float64)
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:first] = self.data[pos:pos + first]
        ts[:first] = self.timestamps[pos:pos + first]
        if first < n:
            out[first:] = self.data[:n - first]
            ts[first:] = self.timestamps[:n - first]
        return out, ts
