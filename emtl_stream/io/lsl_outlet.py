"""LSL outlets: an EMG outlet (replayer, synthetic armband, tests), a marker outlet, the clock.

The EMG outlet declares type ``"EMG"``, a stable ``source_id`` (so inlets can
recover it after a restart) and its channel labels under
``desc/channels/channel/label``. The marker outlet is a one-channel string
stream of type ``"Markers"`` carrying class changes and calibration prompts.
"""

from __future__ import annotations

import numpy as np
import pylsl

from .._checks import check_option, ensure_float, ensure_int

_FORMATS = {"float32": (pylsl.cf_float32, np.float32), "double64": (pylsl.cf_double64, np.float64)}


def local_clock() -> float:
    """The local LSL clock in seconds: the timeline outlets stamp samples on.

    Returns
    -------
    float
        ``pylsl.local_clock()``.
    """
    return pylsl.local_clock()


class EMGOutlet:
    """An LSL outlet for multichannel EMG.

    Parameters
    ----------
    name : str
    n_channels : int
    rate : float
        Nominal sampling rate in Hz.
    source_id : str
        Stable identifier (liblsl recovers inlets by it).
    channel_labels : sequence of str, optional
        Default ``EMG1..EMGn``.
    stype : str
    channel_format : {"float32", "double64"}
    max_buffered_s : int
        Seconds the outlet keeps for slow consumers.
    """

    def __init__(self, name: str, n_channels: int, rate: float, source_id: str,
                 channel_labels=None, stype: str = "EMG", channel_format: str = "float32",
                 max_buffered_s: int = 10):
        self.n_channels = ensure_int(n_channels, "n_channels", 1)
        self.rate = ensure_float(rate, "rate", minimum=0.0, strict_min=True)
        check_option(channel_format, _FORMATS, "channel_format")
        if not source_id:
            raise ValueError("source_id must be a non-empty string so inlets can recover the "
                             "stream after a restart.")
        cf, self.dtype = _FORMATS[channel_format]
        labels = list(channel_labels) if channel_labels is not None else [
            f"EMG{i + 1}" for i in range(self.n_channels)]
        if len(labels) != self.n_channels:
            raise ValueError(f"channel_labels has {len(labels)} entries for {self.n_channels} "
                             "channels.")
        info = pylsl.StreamInfo(name, stype, self.n_channels, self.rate, cf, source_id)
        chans = info.desc().append_child("channels")
        for lab in labels:
            ch = chans.append_child("channel")
            ch.append_child_value("label", str(lab))
            ch.append_child_value("type", "EMG")
            ch.append_child_value("unit", "a.u.")
        self.name, self.source_id, self.channel_labels = name, source_id, tuple(labels)
        self._outlet = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=int(max_buffered_s))

    def push(self, chunk, ts: float | None = None) -> None:
        """Push samples.

        Parameters
        ----------
        chunk : array-like of shape (n, n_channels)
        ts : float, optional
            LSL timestamp of the *last* sample of the chunk (the others follow at
            the nominal rate); default: now.
        """
        arr = np.ascontiguousarray(chunk, dtype=self.dtype)
        if arr.ndim != 2 or arr.shape[1] != self.n_channels:
            raise ValueError(f"chunk must have shape (n, {self.n_channels}), got {arr.shape}.")
        if arr.shape[0]:
            self._outlet.push_chunk(arr, 0.0 if ts is None else float(ts))

    def have_consumers(self) -> bool:
        """Whether an inlet is connected."""
        return self._outlet.have_consumers()

    def wait_for_consumers(self, timeout: float) -> bool:
        """Block until an inlet connects or ``timeout`` seconds pass."""
        return self._outlet.wait_for_consumers(timeout)

    def close(self) -> None:
        """Destroy the outlet (the stream disappears from the network)."""
        self._outlet = None


class MarkerOutlet:
    """A one-channel string LSL outlet of type ``"Markers"``.

    Parameters
    ----------
    name : str
    source_id : str
    """

    def __init__(self, name: str, source_id: str):
        if not source_id:
            raise ValueError("source_id must be a non-empty string.")
        info = pylsl.StreamInfo(name, "Markers", 1, pylsl.IRREGULAR_RATE, pylsl.cf_string,
                                source_id)
        self.name, self.source_id = name, source_id
        self._outlet = pylsl.StreamOutlet(info)

    def push(self, label: str, ts: float | None = None) -> None:
        """Push one marker ``label`` at LSL time ``ts`` (default: now)."""
        self._outlet.push_sample([str(label)], 0.0 if ts is None else float(ts))

    def have_consumers(self) -> bool:
        """Whether an inlet is connected."""
        return self._outlet.have_consumers()

    def close(self) -> None:
        """Destroy the outlet."""
        self._outlet = None
