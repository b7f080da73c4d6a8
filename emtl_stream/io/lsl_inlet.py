"""LSL input: resolve an EMG stream, pull chunks into preallocated buffers, watch its health.

The only input module that imports :mod:`pylsl`. :class:`EMGInlet` resolves a stream
by name / type / source_id, checks its shape against what the model expects, and
then hands out chunks as float64 views into buffers it allocated once. Timestamps
are mapped to the local clock with ``time_correction`` (refreshed periodically,
always with a timeout). Gaps (a timestamp jump of more than 1.5 sample periods)
are counted and flagged through :attr:`EMGInlet.gap_pending`; a stream silent for
``lost_after_s`` is declared lost and re-acquired with back-off, either by
liblsl's own recovery (same ``source_id``) or by resolving the same query again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pylsl

from .._checks import ensure_float, ensure_int
from ..errors import ChannelMismatch, StreamLost, StreamNotFound
from ..logs import logger

local_clock = pylsl.local_clock

NUMERIC_FORMATS = {"float32", "double64", "int8", "int16", "int32", "int64"}
_FORMAT_NAMES = {pylsl.cf_float32: "float32", pylsl.cf_double64: "double64",
                 pylsl.cf_string: "string", pylsl.cf_int32: "int32", pylsl.cf_int16: "int16",
                 pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"}
_NP_DTYPES = {"float32": np.float32, "double64": np.float64, "int8": np.int8,
              "int16": np.int16, "int32": np.int32, "int64": np.int64}
GAP_FACTOR = 1.5  # a jump above this many sample periods is a gap
RECONNECT_BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 5.0)
RECOVERY_GRACE_S = 3.0  # time liblsl gets to recover a same-source_id restart itself


@dataclass(frozen=True)
class StreamDescription:
    """What the connected LSL stream declares.

    Attributes
    ----------
    name, type, source_id : str
    n_channels : int
    rate : float
        Nominal sampling rate in Hz (0 = irregular).
    channel_format : str
        ``"float32"``, ``"double64"``, ``"int16"``, ...
    channel_labels : tuple of str
        From ``desc/channels/channel/label``; empty strings where absent.
    """

    name: str
    type: str
    source_id: str
    n_channels: int
    rate: float
    channel_format: str
    channel_labels: tuple


def _quote(value: str, what: str) -> str:
    """XPath string literal for ``value`` (no escape syntax in XPath 1.0)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{what} {value!r} contains both quote characters; LSL queries cannot "
                     "express it. Rename the stream.")


def build_query(name=None, stype=None, source_id=None) -> str:
    """XPath predicate selecting streams by the given properties (``""``: any stream)."""
    parts = []
    for key, value in (("name", name), ("type", stype), ("source_id", source_id)):
        if value:
            parts.append(f"{key}={_quote(str(value), key)}")
    return " and ".join(parts)


def _channel_labels(info) -> tuple:
    labels = []
    ch = info.desc().child("channels").child("channel")
    for _ in range(info.channel_count()):
        labels.append(ch.child_value("label") if not ch.empty() else "")
        ch = ch.next_sibling() if not ch.empty() else ch
    return tuple(labels)


class EMGInlet:
    """A health-checked LSL inlet for a multichannel EMG stream.

    Parameters
    ----------
    name, stype, source_id : str, optional
        Stream properties to match (any combination; at least one).
    resolve_timeout : float
        Seconds :meth:`connect` waits for a matching stream.
    max_buflen_s : int
        LSL-side buffer in seconds. Short on purpose: after a stall the daemon
        should see fresh samples, not a backlog of stale ones.
    expected_channels, expected_rate : optional
        Checked at :meth:`connect`; a mismatch raises :class:`ChannelMismatch`.
    chunk_cap : int, optional
        Most samples one :meth:`pull` returns (default: 250 ms worth, at least 64).
    time_correction_every_s : float
        Refresh period of the clock offset.
    lost_after_s : float
        No samples for this long: the stream counts as lost.
    time_correction_timeout : float
        Timeout of each ``time_correction`` call (the old offset is kept on timeout).

    Attributes
    ----------
    description : StreamDescription or None
    connected : bool
    gap_pending : bool
        Set when a gap or a reconnection happened; the caller clears it after
        calling ``FeaturePipeline.mark_gap()``.
    n_samples, n_chunks, n_gaps, n_reconnects, n_lost_samples : int
    time_offset : float
        Current ``time_correction`` (added to every timestamp).
    """

    def __init__(self, name=None, stype="EMG", source_id=None, *, resolve_timeout=5.0,
                 max_buflen_s=2, expected_channels=None, expected_rate=None, chunk_cap=None,
                 time_correction_every_s=5.0, lost_after_s=1.0, time_correction_timeout=0.5):
        if not (name or stype or source_id):
            raise ValueError("EMGInlet needs at least one of name, stype or source_id to "
                             "select a stream.")
        self.query = build_query(name, stype, source_id)
        self.name, self.stype, self.source_id = name, stype, source_id
        self.resolve_timeout = ensure_float(resolve_timeout, "resolve_timeout", minimum=0.0)
        self.max_buflen_s = ensure_int(max(1, math.ceil(max_buflen_s)), "max_buflen_s", 1)
        self.expected_channels = (None if expected_channels is None
                                  else ensure_int(expected_channels, "expected_channels", 1))
        self.expected_rate = (None if expected_rate is None
                              else ensure_float(expected_rate, "expected_rate", minimum=0.0))
        self.chunk_cap = None if chunk_cap is None else ensure_int(chunk_cap, "chunk_cap", 1)
        self.time_correction_every_s = ensure_float(time_correction_every_s,
                                                    "time_correction_every_s", minimum=0.0)
        self.lost_after_s = ensure_float(lost_after_s, "lost_after_s", minimum=0.0,
                                         strict_min=True)
        self.time_correction_timeout = ensure_float(time_correction_timeout,
                                                    "time_correction_timeout", minimum=0.0)
        self._inlet = None
        self._uid = None
        self._resolver = None
        self._seen: dict = {}
        #: Why the last stream found while reconnecting was refused (wrong channel
        #: count or rate), or None; the daemon turns a new reason into an event.
        self.refusal: str | None = None
        self.description: StreamDescription | None = None
        self.connected = False
        self.gap_pending = False
        self.n_samples = self.n_chunks = self.n_gaps = 0
        self.n_reconnects = self.n_lost_samples = 0
        #: Outages (the stream was lost, or no sample for ``lost_after_s``) and their
        #: total length; their samples are not counted in ``n_lost_samples``.
        self.n_outages = 0
        self.outage_s = 0.0
        self._restoring = False
        self.time_offset = 0.0
        self._last_ts = None  # last timestamp on the remote clock
        self._last_data = 0.0  # monotonic time of the last sample
        self._next_tc = 0.0
        self._lost_since = None
        self._backoff_i = 0
        self._next_retry = 0.0

    # ------------------------------------------------------------------ connect
    def _describe_query(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("name", self.name), ("type", self.stype),
                                            ("source_id", self.source_id)) if v]
        return ", ".join(parts)

    def connect(self) -> StreamDescription:
        """Resolve the stream, check it and open the inlet.

        Returns
        -------
        StreamDescription

        Raises
        ------
        StreamNotFound
            Nothing matched within ``resolve_timeout`` (the message names the query).
        ChannelMismatch
            Channel count, rate or format differ from what is expected.
        """
        found = pylsl.resolve_bypred(self.query, 1, self.resolve_timeout)
        if not found:
            raise StreamNotFound(
                f"no LSL stream with {self._describe_query()} appeared within "
                f"{self.resolve_timeout:g} s; check that the amplifier (or "
                "`emtl-stream replay`) is running and the names match.")
        self._open(found[0], first=True)
        return self.description

    def _open(self, info, first: bool) -> None:
        fmt = _FORMAT_NAMES.get(info.channel_format(), str(info.channel_format()))
        n_ch, rate = info.channel_count(), float(info.nominal_srate())
        where = f"LSL stream {info.name()!r} (source_id {info.source_id()!r})"
        if fmt not in NUMERIC_FORMATS:
            raise ChannelMismatch(f"{where} carries {fmt} values; EMG needs a numeric format "
                                  "such as float32.")
        if self.expected_channels is not None and n_ch != self.expected_channels:
            raise ChannelMismatch(f"{where} has {n_ch} channels but the model expects "
                                  f"{self.expected_channels}; select the right stream or "
                                  "retrain the model for this device.")
        if self.expected_rate is not None and abs(rate - self.expected_rate) > 1e-6 * max(
                1.0, self.expected_rate):
            raise ChannelMismatch(f"{where} runs at {rate:g} Hz but the model expects "
                                  f"{self.expected_rate:g} Hz; select the right stream or "
                                  "retrain the model at this rate.")
        self._close_inlet()
        inlet = pylsl.StreamInlet(info, max_buflen=self.max_buflen_s, recover=True)
        try:
            full = inlet.info(timeout=max(self.resolve_timeout, 1.0))
            labels = _channel_labels(full)
        except pylsl.util.TimeoutError:  # desc is a nicety; the data still flow
            labels = ("",) * n_ch
        inlet.open_stream(timeout=max(self.resolve_timeout, 1.0))
        self._inlet = inlet
        self._uid = info.uid()
        self.description = StreamDescription(info.name(), info.type(), info.source_id(), n_ch,
                                             rate, fmt, labels)
        cap = self.chunk_cap or (max(64, math.ceil(0.25 * rate)) if rate > 0 else 1024)
        # Buffers are allocated once per connection: liblsl writes into `_raw`
        # (the stream's own dtype); `_out` is the float64 view handed out.
        self._cap = cap
        self._raw = np.zeros((cap, n_ch), dtype=_NP_DTYPES[fmt])
        self._out = self._raw if fmt == "double64" else np.zeros((cap, n_ch), np.float64)
        self._stamps = np.zeros(cap, np.float64)
        self._refresh_time_correction(force=True)
        self.connected = True
        self._last_data = time.monotonic()
        if self._lost_since is not None:
            self.outage_s += self._last_data - self._lost_since
        self._restoring = not first
        self._lost_since = None
        self._backoff_i = 0
        if not first:
            self.n_reconnects += 1
            self.gap_pending = True
        logger.info("connected to %s: %d ch @ %g Hz (%s)", self.description.name, n_ch, rate, fmt)

    def _refresh_time_correction(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_tc:
            return
        self._next_tc = now + self.time_correction_every_s
        try:
            self.time_offset = float(self._inlet.time_correction(
                timeout=self.time_correction_timeout))
        except (pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
            logger.debug("time_correction failed (%s); keeping offset %s", exc, self.time_offset)

    # ------------------------------------------------------------------ pull
    def pull(self, timeout: float = 0.0, min_samples: int = 1):
        """Pull what is available (at most ``chunk_cap`` samples).

        Parameters
        ----------
        timeout : float
            Seconds to wait for ``min_samples`` samples (0: return at once).
        min_samples : int
            With a timeout, return as soon as this many samples arrived (clipped to
            ``chunk_cap``), then add what else is there without waiting; fewer when
            the timeout ends first. A caller that knows how many samples complete its
            next window waits for exactly those in one call instead of waking at
            every chunk the source sends.

        Returns
        -------
        samples : ndarray of shape (n, n_channels), float64
            A view into a buffer reused by the next call: copy it to keep it.
        timestamps : ndarray of shape (n,), float64
            Local-clock LSL timestamps (also a reused buffer).
        """
        if self._inlet is None:
            if self._resolver is not None:
                self._try_reacquire()
            return self._empty()
        try:
            # timeout 0: one liblsl call returns what is there; otherwise wait
            # for min_samples only, not for a full chunk.
            wait_for = min(max(1, int(min_samples)), self._cap) if timeout > 0 else None
            raw, stamps = self._inlet.pull_chunk(timeout=timeout, max_samples=self._cap,
                                                 dest_obj=self._raw, min_samples=wait_for,
                                                 as_numpy=True)
        except pylsl.util.LostError:
            # Only for streams liblsl cannot recover (no source_id): re-resolve.
            self._declare_lost("the source closed and cannot be recovered")
            self._close_inlet()
            self._try_reacquire()
            return self._empty()
        n = len(stamps)
        now = time.monotonic()
        if n == 0:
            if self.connected and now - self._last_data > self.lost_after_s:
                self._declare_lost(f"no samples for {self.lost_after_s:g} s")
            if not self.connected:
                self._try_reacquire()
            return self._empty()
        if not self.connected:
            # liblsl's recovery brought the same source back.
            self.connected = True
            self.n_reconnects += 1
            self.gap_pending = True
            self._restoring = True
            if self._lost_since is not None:
                self.outage_s += now - self._lost_since
            self._lost_since = None
            self._backoff_i = 0
            self._resolver = None
            self._refresh_time_correction(force=True)
            logger.warning("LSL stream %s restored", self.description.name)
        self._last_data = now
        self._refresh_time_correction()
        self._check_gaps(stamps)
        out = self._out[:n]
        if self._out is not self._raw:
            np.copyto(out, raw[:n], casting="unsafe")
        ts = self._stamps[:n]
        np.add(stamps, self.time_offset, out=ts)
        self.n_samples += n
        self.n_chunks += 1
        return out, ts

    def _empty(self):
        if self.description is None:
            return np.empty((0, 0)), np.empty(0)
        return self._out[:0], self._stamps[:0]  # empty views, no allocation

    def _check_gaps(self, stamps: np.ndarray) -> None:
        rate = self.description.rate
        if rate <= 0:
            return
        limit = GAP_FACTOR / rate
        first_dt = None if self._last_ts is None else stamps[0] - self._last_ts
        self._last_ts = float(stamps[-1])
        n_gaps = lost = 0
        if len(stamps) > 1:
            jumps = stamps[1:] - stamps[:-1]
            if jumps.max() > limit:  # the common case (no gap) costs one pass
                big = jumps > limit
                n_gaps = int(big.sum())
                lost = int(np.rint(jumps[big] * rate).sum()) - n_gaps
        if first_dt is not None and first_dt > limit:
            if self._restoring or first_dt > self.lost_after_s:
                # An outage, not lost samples: the source sent nothing meanwhile.
                if not self._restoring:  # a stall never declared lost
                    self.n_outages += 1
                    self.outage_s += float(first_dt)
                self.gap_pending = True
            else:
                n_gaps += 1
                lost += int(round(first_dt * rate)) - 1
        self._restoring = False
        if n_gaps:
            self.n_gaps += n_gaps
            self.n_lost_samples += lost
            self.gap_pending = True
            logger.info("LSL stream %s: %d gap(s), about %d sample(s) missing",
                        self.description.name, n_gaps, lost)

    # ------------------------------------------------------------------ loss
    def _declare_lost(self, why: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self.n_outages += 1
        self._lost_since = time.monotonic()
        self._backoff_i = 0
        self._next_retry = self._lost_since + RECONNECT_BACKOFF_S[0]
        # A continuous resolver watches for the stream in the background, so
        # re-acquiring never blocks the caller's loop.
        self._resolver = pylsl.ContinuousResolver(pred=self.query, forget_after=1.0)
        self._seen = {}
        exc = StreamLost(f"LSL stream {self.description.name!r} "
                         f"({self._describe_query()}) lost: {why}; reconnecting")
        logger.warning("%s", exc)

    def _try_reacquire(self) -> None:
        now = time.monotonic()
        if self._resolver is None or now < self._next_retry:
            return
        self._backoff_i = min(self._backoff_i + 1, len(RECONNECT_BACKOFF_S) - 1)
        self._next_retry = now + RECONNECT_BACKOFF_S[self._backoff_i]
        for info in self._resolver.results():
            uid = info.uid()
            if uid == self._uid:
                continue  # the outlet we lost: still listed, or recovering on its own
            first_seen = self._seen.setdefault(uid, now)
            if (self._inlet is not None and info.source_id()
                    and info.source_id() == self.description.source_id
                    and now - first_seen < RECOVERY_GRACE_S):
                # liblsl's own recovery reconnects the open inlet to a restarted
                # source with the same source_id without losing samples; replacing
                # the inlet now could drop what it already received.
                continue
            try:
                self._open(info, first=False)
            except ChannelMismatch as exc:
                if str(exc) != self.refusal:  # once per reason, not at every retry
                    logger.error("not reconnecting: %s", exc)
                self.refusal = str(exc)
                continue
            except (pylsl.util.TimeoutError, pylsl.util.LostError, RuntimeError) as exc:
                logger.info("reconnect attempt failed: %s", exc)
                continue
            self._resolver = None
            self.refusal = None
            logger.warning("LSL stream %s re-acquired", self.description.name)
            return

    # ------------------------------------------------------------------ close
    def _close_inlet(self) -> None:
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:  # closing a dead inlet must not raise
                pass
            self._inlet = None

    def close(self) -> None:
        """Close the inlet; :meth:`connect` may be called again."""
        self._close_inlet()
        self._resolver = None
        self.connected = False

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()


class MarkerInlet:
    """String markers from an LSL ``Markers`` stream (e.g. a stimulus program's labels).

    Resolution never blocks the caller for long: :meth:`poll` tries to resolve with
    a short timeout at most every ``retry_s`` until the stream appears.

    Parameters
    ----------
    name : str
        Name of the marker stream.
    resolve_timeout : float
        Seconds per resolve attempt.
    retry_s : float
        Seconds between resolve attempts while not connected.
    """

    def __init__(self, name: str, *, resolve_timeout: float = 0.05, retry_s: float = 1.0):
        if not name:
            raise ValueError("MarkerInlet needs the name of the marker stream.")
        self.name = name
        self.query = build_query(name, "Markers", None)
        self.resolve_timeout = ensure_float(resolve_timeout, "resolve_timeout", minimum=0.0)
        self.retry_s = ensure_float(retry_s, "retry_s", minimum=0.0)
        self._inlet = None
        self._next_try = 0.0
        self.time_offset = 0.0
        self.n_markers = 0

    @property
    def connected(self) -> bool:
        """Whether the marker stream was found."""
        return self._inlet is not None

    def poll(self) -> list:
        """Markers received since the last call.

        Returns
        -------
        list of (str, float)
            ``(marker, timestamp)`` pairs, timestamps on the local clock.
        """
        if self._inlet is None:
            now = time.monotonic()
            if now < self._next_try:
                return []
            self._next_try = now + self.retry_s
            found = pylsl.resolve_bypred(self.query, 1, self.resolve_timeout)
            if not found:
                return []
            if found[0].channel_format() != pylsl.cf_string:
                raise ChannelMismatch(f"marker stream {self.name!r} must carry strings.")
            self._inlet = pylsl.StreamInlet(found[0], max_buflen=60, recover=True)
            self._inlet.open_stream(timeout=1.0)
            try:
                self.time_offset = self._inlet.time_correction(timeout=0.5)
            except pylsl.util.TimeoutError:
                self.time_offset = 0.0
            logger.info("marker stream %s connected", self.name)
        out = []
        try:
            samples, stamps = self._inlet.pull_chunk(timeout=0.0)
        except pylsl.util.LostError:
            self.close()
            return []
        for sample, ts in zip(samples, stamps):
            out.append((str(sample[0]), float(ts) + self.time_offset))
        self.n_markers += len(out)
        return out

    def close(self) -> None:
        """Close the inlet (a later :meth:`poll` resolves again)."""
        if self._inlet is not None:
            try:
                self._inlet.close_stream()
            except Exception:  # closing a dead inlet must not raise
                pass
        self._inlet = None
