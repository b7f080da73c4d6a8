"""Play a recording or the synthetic armband as a live LSL EMG stream.

:class:`Replayer` runs one thread that pushes chunks paced by the *sample clock*:
chunk ``k`` is pushed when ``t_start + k * chunk / (fs * rate)`` has passed, so
sleep overshoot never accumulates into drift. Every sample is stamped on that
sample-clock timeline (``t_start + i / fs``), which at ``rate=1`` is the local
LSL clock. Class changes go out on a marker stream and are recorded as
``(timestamp, class)`` pairs so tests and the demo can score predictions with
:meth:`Replayer.label_at` / :meth:`Replayer.labels_between`.

With ``follow_prompts`` the thread also subscribes to the daemon's ``prompt``
topic over ZeroMQ and makes the synthetic armband perform the prompted class.
"""

from __future__ import annotations

import bisect
import math
import os
import signal
import threading
import time
import uuid

import numpy as np

from .._checks import ensure_float
from ..io.client import Client
from ..io.lsl_outlet import EMGOutlet, MarkerOutlet, local_clock
from ..io.recordings import Recording, load_recording
from ..logs import logger
from .synthetic import SyntheticArmband


class Replayer:
    """Stream a :class:`Recording` or a :class:`SyntheticArmband` over LSL.

    Parameters
    ----------
    source : Recording or SyntheticArmband
    name : str
        LSL stream name (the marker stream is ``name + "-markers"``).
    source_id : str, optional
        Default: stable, from the name and the recording's content hash (or the
        synthetic armband's settings).
    rate : float
        Speed factor; ``0`` or ``inf`` push as fast as possible.
    loop : bool
        Recording: start again at the end (timestamps keep increasing).
    shift : float
        Roll channels by this many electrodes (recording: integer; synthetic: any).
    chunk_ms : float
        Samples per push, in milliseconds of signal.
    markers : bool
        Also open a ``Markers`` outlet carrying class changes.
    follow_prompts : str, optional
        ZeroMQ PUB address; the synthetic source performs each prompted class.
    class_schedule : sequence of (class, seconds), optional
        Synthetic: perform these classes in turn (repeated when ``loop``).
    counter_channel : bool
        Overwrite channel 0 with the running sample number (for tests).
    seconds : float, optional
        Stop after this much signal.
    channel_format : {"float32", "double64"}, optional
        Default: float32, or double64 for a float64 recording.
    wait_for_consumer_s : float
        Hold the first sample until an inlet is connected (at most this long), so
        a consumer sees the stream from sample 0 (tests, benchmarks).
    """

    def __init__(self, source, *, name: str = "emtl-replay", source_id: str | None = None,
                 rate: float = 1.0, loop: bool = False, shift: float = 0.0,
                 chunk_ms: float = 10.0, markers: bool = True, follow_prompts: str | None = None,
                 class_schedule=None, counter_channel: bool = False,
                 seconds: float | None = None, channel_format: str | None = None,
                 wait_for_consumer_s: float = 0.0):
        if isinstance(source, SyntheticArmband):
            self.synthetic = True
            self.fs, self.n_channels = source.fs, source.n_channels
            self.class_names = list(source.class_names)
            default_id = (f"emtl-synthetic-{name}-{source.n_channels}x{source.fs:g}"
                          f"-seed{source.seed}")
        elif isinstance(source, Recording):
            self.synthetic = False
            self.fs, self.n_channels = source.fs, source.n_channels
            self.class_names = list(source.class_names) if source.class_names else None
            default_id = f"emtl-replay-{name}-{source.digest()}"
            if follow_prompts or class_schedule:
                raise ValueError("follow_prompts and class_schedule need a SyntheticArmband "
                                 "source; a recording plays its own labels.")
        else:
            raise TypeError(f"source must be a Recording or a SyntheticArmband, got "
                            f"{type(source).__name__}.")
        self.source = source
        self.name = name
        self.source_id = source_id or default_id
        rate = float(rate)
        if math.isnan(rate) or rate < 0:
            raise ValueError(f"rate must be >= 0 (0 or inf: as fast as possible), got {rate}.")
        self.rate = rate
        self.fast = rate == 0 or math.isinf(rate)
        self.loop = bool(loop)
        self.chunk = max(1, int(round(ensure_float(chunk_ms, "chunk_ms", minimum=0.0,
                                                   strict_min=True) * self.fs / 1000.0)))
        self.markers = bool(markers)
        self.follow_prompts = follow_prompts
        self.counter_channel = bool(counter_channel)
        self.max_samples = None if not seconds else int(round(seconds * self.fs))
        self.wait_for_consumer_s = ensure_float(wait_for_consumer_s, "wait_for_consumer_s",
                                                minimum=0.0)
        if channel_format is None:
            channel_format = ("double64" if not self.synthetic and source.emg.dtype == np.float64
                              else "float32")
        self.channel_format = channel_format
        self._schedule = None
        if class_schedule is not None:
            sched = []
            for cls, secs in class_schedule:
                source.class_index(cls)
                sched.append((cls, max(1, int(round(float(secs) * self.fs)))))
            if not sched:
                raise ValueError("class_schedule is empty.")
            self._schedule = sched
        self._shift = 0.0
        self.set_shift(shift)
        self._class = self.class_names[0] if self.synthetic else None
        self._lock = threading.Lock()
        # Timestamps are on a 1/fs grid; received ones carry rounding from LSL's
        # timestamp deduction, so look-ups snap to the nearest sample.
        self._half = 0.5 / self.fs
        self._times: list[float] = []
        self._classes: list = []
        self._stop = threading.Event()
        self._started = threading.Event()
        self.done = threading.Event()
        self._thread = None
        self.error: BaseException | None = None
        self.n_pushed = 0
        self.t_start = None
        self.late_s = 0.0  # how far the pushes fell behind the sample clock, at worst

    # ------------------------------------------------------------------ control
    def set_shift(self, k: float) -> None:
        """Rotate by ``k`` electrodes from now on (recording: integer ``k`` only)."""
        k = ensure_float(k, "shift")
        if self.synthetic:
            self.source.set_shift(k)
        elif k != round(k):
            raise ValueError(f"shift {k} is fractional; a recording can only be rolled by whole "
                             "electrodes (the synthetic armband takes any shift).")
        self._shift = k

    def set_class(self, name) -> None:
        """Synthetic: perform class ``name`` from the next chunk on."""
        if not self.synthetic:
            raise ValueError("set_class needs a SyntheticArmband source.")
        self.source.class_index(name)
        self._class = name if isinstance(name, str) else self.class_names[int(name)]

    def start(self, timeout: float = 10.0) -> "Replayer":
        """Open the outlets in a new thread and start streaming; returns self."""
        if self._thread is not None:
            raise RuntimeError("Replayer already started.")
        self._thread = threading.Thread(target=self._run, name=f"replay-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"replay thread did not start within {timeout} s.")
        if self.error is not None:
            raise RuntimeError(f"replay failed to start: {self.error}") from self.error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop streaming and close the outlets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end of a finite replay; True if it ended."""
        return self.done.wait(timeout)

    # ------------------------------------------------------------------ ground truth
    def label_at(self, t: float):
        """Class performed at LSL timestamp ``t`` (``None`` before the start).

        ``t`` is rounded to the nearest sample of the replay's timeline.
        """
        with self._lock:
            i = bisect.bisect_right(self._times, t + self._half) - 1
            return self._classes[i] if i >= 0 else None

    def labels_at(self, ts) -> list:
        """:meth:`label_at` for each timestamp in ``ts``."""
        with self._lock:
            idx = np.searchsorted(np.asarray(self._times), np.asarray(ts, float) + self._half,
                                  side="right") - 1
            return [self._classes[i] if i >= 0 else None for i in idx.tolist()]

    def labels_between(self, t0: float, t1: float) -> list:
        """``(t, class)`` changes in effect during ``[t0, t1]``.

        The first pair is the class already performed at ``t0`` (with its own
        start time), followed by every change up to ``t1``.
        """
        with self._lock:
            i0 = max(bisect.bisect_right(self._times, t0 + self._half) - 1, 0)
            i1 = bisect.bisect_right(self._times, t1 + self._half)
            return list(zip(self._times[i0:i1], self._classes[i0:i1]))

    def _record(self, t: float, cls) -> None:
        with self._lock:
            if self._classes and self._classes[-1] == cls:
                return
            self._times.append(t)
            self._classes.append(cls)
        if self._marker is not None and cls is not None:
            self._marker.push(str(cls), t)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        sub = None
        self._marker = None
        try:
            labels = (self.source.channel_names if not self.synthetic else None) or [
                f"EMG{i + 1}" for i in range(self.n_channels)]
            if self.counter_channel:
                labels = ["counter"] + list(labels[1:])
            # The outlet drops what a slow consumer has not taken after
            # max_buffered seconds (nominal): a fast replay must fit whole.
            buffered = 10
            if self.fast and not self.synthetic:
                buffered = max(buffered, math.ceil(self.source.n_samples / self.fs) + 5)
            outlet = EMGOutlet(self.name, self.n_channels, self.fs, self.source_id,
                               channel_labels=labels, channel_format=self.channel_format,
                               max_buffered_s=buffered)
            if self.markers:
                self._marker = MarkerOutlet(self.name + "-markers", self.source_id + "-markers")
            if self.follow_prompts:
                sub = _prompt_subscriber(self.follow_prompts)
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._started.set()
            self.done.set()
            return
        self._started.set()
        try:
            self._stream(outlet, sub)
            if not self._stop.is_set() and outlet.have_consumers():
                # Natural end: give liblsl time to deliver the last chunk before
                # the outlet (and its send queue) is destroyed.
                self._stop.wait(0.5)
        except BaseException as exc:
            self.error = exc
            logger.exception("replay %s failed", self.name)
            if os.environ.get("EMTL_RAISE_BACKGROUND_ERRORS"):
                raise
        finally:
            if sub is not None:
                sub.close()
            outlet.close()
            if self._marker is not None:
                self._marker.close()
            self.done.set()

    def _stream(self, outlet: EMGOutlet, sub) -> None:
        deadline = time.monotonic() + self.wait_for_consumer_s
        while (self.wait_for_consumer_s and not self._stop.is_set()
               and time.monotonic() < deadline and not outlet.wait_for_consumers(0.1)):
            pass
        fs = self.fs
        period = 1.0 / fs
        speed = self.rate if not self.fast else math.inf
        t_start = local_clock()
        self.t_start = t_start
        i = 0  # samples pushed
        pos = 0  # position in the recording / schedule
        while not self._stop.is_set():
            if sub is not None:
                self._poll_prompts(sub)
            n = self.chunk
            if self.max_samples is not None:
                n = min(n, self.max_samples - i)
                if n <= 0:
                    return
            if not self.fast:
                due = t_start + (i + n) * period / speed
                now = local_clock()
                if now < due:
                    self._stop.wait(due - now)
                    continue
                self.late_s = max(self.late_s, now - due)
            block, cls_runs, pos = self._next_block(n, pos)
            if block is None:
                return
            n = block.shape[0]
            if self._shift and not self.synthetic:
                block = np.roll(block, int(round(self._shift)), axis=1)
            if self.counter_channel:
                block[:, 0] = np.arange(i, i + n, dtype=block.dtype)
            for offset, cls in cls_runs:
                self._record(t_start + (i + offset) * period, cls)
            outlet.push(block, t_start + (i + n - 1) * period)
            i += n
            self.n_pushed = i
            if self.fast:
                time.sleep(0)  # let consumers in

    def _next_block(self, n: int, pos: int):
        """Next ``n`` samples, the class runs inside them and the new position."""
        if not self.synthetic:
            rec = self.source
            if pos >= rec.n_samples:
                if not self.loop:
                    return None, None, pos
                pos = 0
            stop = min(pos + n, rec.n_samples)
            block = np.array(rec.emg[pos:stop], dtype=outlet_dtype(self.channel_format))
            runs = []
            if rec.labels is not None:
                lab = rec.labels[pos:stop]
                change = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
                runs = [(int(c), rec.class_name(int(lab[c]))) for c in change]
            return block, runs, stop
        if self._schedule is None:
            cls = self._class
            return self.source.generate(n, cls), [(0, cls)], pos
        # Walk the schedule: pos counts samples since the schedule started.
        total = sum(s for _, s in self._schedule)
        parts, runs, done = [], [], 0
        while done < n:
            if pos >= total and not self.loop:
                cls = self._schedule[-1][0]
                take = n - done
            else:
                p = pos % total
                acc = 0
                for cls, s in self._schedule:
                    if p < acc + s:
                        take = min(n - done, acc + s - p)
                        break
                    acc += s
            runs.append((done, cls))
            parts.append(self.source.generate(take, cls))
            self._class = cls
            done += take
            pos += take
        return np.concatenate(parts), runs, pos

    def _poll_prompts(self, sub) -> None:
        while True:
            msg = sub.recv(timeout_s=0)  # malformed frames are logged and skipped there
            if msg is None:
                return
            cls = msg[1].get("class")
            if cls is None:
                continue
            try:
                self.set_class(cls)
            except ValueError:
                logger.info("replay: prompt class %r is not one of %s; ignored", cls,
                            self.class_names)


def outlet_dtype(channel_format: str):
    """numpy dtype of an outlet channel format."""
    return np.float64 if channel_format == "double64" else np.float32


def _prompt_subscriber(address: str):
    """A subscription to the ``prompt`` topic of the daemon publishing on ``address``."""
    return Client(pub=address).subscribe(["prompt"])


def run_replay(path_or_none, *, rate: float = 1.0, shift: float = 0.0, loop: bool = False,
               name: str = "emtl-replay", synthetic: bool = False, n_channels: int = 8,
               fs: float = 1000.0, seconds: float = 0.0, follow_prompts: str | None = None,
               seed: int = 0, source_id: str | None = None, announce=None) -> int:
    """Play a recording file (or the synthetic armband) until done or SIGINT/SIGTERM.

    A synthetic armband performs the classes prompted on ``follow_prompts`` (a
    daemon's PUB address) or, without it, cycles through its classes (3 s each);
    ``source_id`` defaults to one derived from the name and the source. ``announce``
    (a callable taking one line of text) is told what is being streamed; default: the
    log at INFO.

    Returns
    -------
    int
        Exit code: 0 on a normal end or an interrupt, 1 if streaming failed.
    """
    if synthetic:
        source = SyntheticArmband(n_channels=n_channels, fs=fs, seed=seed, shift=shift)
        schedule = None
        if not follow_prompts:  # without prompts, cycle the classes so the stream is useful
            schedule = [(c, 3.0) for c in source.class_names]
        player = Replayer(source, name=name, rate=rate, loop=True, shift=shift,
                          follow_prompts=follow_prompts, class_schedule=schedule,
                          seconds=seconds or None, source_id=source_id)
    else:
        if follow_prompts:
            raise ValueError("follow_prompts needs the synthetic armband; a recording plays "
                             "its own labels.")
        rec = load_recording(path_or_none)
        player = Replayer(rec, name=name, rate=rate, loop=loop, shift=shift,
                          seconds=seconds or None, source_id=source_id)
    stop = threading.Event()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda *a: stop.set())
    player.start()
    text = (f"{'synthetic EMG' if synthetic else path_or_none} as LSL stream {name!r} "
            f"(source_id {player.source_id}, markers {name + '-markers'!r}): "
            f"{player.n_channels} ch @ {player.fs:g} Hz, "
            f"{'max' if player.fast else f'{rate:g}x'} speed, shift {shift:g}"
            + (f", following prompts on {follow_prompts}" if follow_prompts else
               ", cycling the classes" if synthetic else ""))
    (announce or (lambda t: logger.info("replaying %s", t)))(text)
    try:
        while not stop.is_set() and not player.done.is_set():
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        player.stop()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 1 if player.error is not None else 0


def unique_source_id(prefix: str = "emtl") -> str:
    """A fresh ``source_id`` (tests, throw-away streams)."""
    return f"{prefix}-{uuid.uuid4().hex}"
