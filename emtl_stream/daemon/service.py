"""The daemon: LSL in, predictions out, recalibration in the background.

One loop thread owns the LSL inlet, the feature pipeline, the ZeroMQ publisher and
the control socket, so none of them needs a lock: control requests are handled
between two pulls, in the same thread. The loop blocks in the control socket's
poll for as long as no window can be complete (the time the missing samples take
at the stream's rate, capped by :data:`MAX_WAIT_S`), then pulls what LSL has
without waiting; it does not spin.

Fits run in a single worker thread; a fit job (:mod:`.jobs`) receives copies of
what it needs and returns a plain result. The loop collects it and swaps the
live model (:class:`~.live.LiveModel`) in one assignment, atomic for the next
window. Everything else is a plain object or function: the calibration session
(:mod:`.session`) and the functions that begin, tick and finish it and install its
fit's result (:mod:`.calibrate`), post-processing (:mod:`.postprocess`), the shift watch
(:mod:`.shift`), the control handlers (:mod:`.handlers`), the fit worker
(:mod:`.worker`), events and their rate limits (:mod:`.events`), the connect
back-off (:mod:`.connection`), the stored maps (:mod:`.maps`) and the ``status``
reply (:mod:`.status`).

Every failure in the loop is logged, announced as an ``event`` and contained:
the daemon keeps serving with its last good model.
"""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np

from ..errors import ChannelMismatch, EmtlError, StreamError
from ..logs import logger
from . import calibrate
from .blas import SERVING_BLAS_THREADS, limit_blas_threads
from .bundle import SourceBundle
from .connection import ConnectPolicy
from .events import Events
from .live import LiveModel, source_fingerprint
from .maps import IDENTITY_REASON, map_meta, pick_reference, resume_map, stored_rotation
from .postprocess import PostProcessor
from .session import Session
from .shift import ShiftReference, ShiftWatch
from .state import State, StateMachine
from .status import build_status
from .worker import FitWorker

_RAISE = os.environ.get("EMTL_RAISE_BACKGROUND_ERRORS", "") == "1"

#: Longest the loop blocks in one poll (s): bounds the latency of a finished fit,
#: a prompt, a stream-lost check and a stop request.
MAX_WAIT_S = 0.05
#: The last stretch before a window is due (s) is waited for in a blocking LSL pull,
#: which returns with the first sample, instead of in the control poll.
LSL_HANDOFF_S = 0.01
#: The ring test's rolled windows (C rows of n features, each mapped by an n x n H)
#: ride in the class decision's kernel call while C * n * n stays within this many
#: multiply-adds (8 electrodes x 4 features: 8,192; 16: 65,536), and are scored after
#: the prediction is published above it (64 electrodes: 4.2 M, about 0.9 ms of the
#: window's 1.1 ms classification on the project's 2-core machine).
RING_ROWS_INLINE_MAX = 1 << 17
#: Poll while no stream is connected (s); connect attempts follow their own back-off
#: (:mod:`.connection`).
IDLE_WAIT_S = 0.05
#: While a fit runs, the loop checks for its result at least this often (s), so the
#: swap follows the fit's end instead of the next window's arrival.
FIT_POLL_S = 0.002


class Daemon:
    """The emtl_stream service.

    Parameters
    ----------
    config : emtl_stream.config.Config
    bundle : SourceBundle, optional
        Source model to serve; default: the one in the state directory, else
        ``[model] path``, else none (the daemon waits for a ``train`` session).
    clock : callable, optional
        The LSL local clock (injected for tests; default ``pylsl.local_clock``).
    """

    def __init__(self, config, bundle: SourceBundle | None = None, clock=None):
        from ..io.lsl_inlet import local_clock
        from ..io.store import StateStore

        self.config = config
        self.clock = clock or local_clock
        self.store = StateStore(config.state.dir)
        self.fsm = StateMachine()
        self.worker = FitWorker()
        self.events = Events(self.clock)
        self.link = ConnectPolicy()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._started_at = time.monotonic()
        self.post = PostProcessor(config.classify.reject_below, config.classify.vote_windows)
        self.session: Session | None = None
        self.watch: ShiftWatch | None = None
        self.speed = None  # LiveSpeed when the bundle carries a speed calibration
        self.live: LiveModel | None = None
        self.last_fit: dict | None = None
        self.last_error = ""
        self.inlet = None
        self.pipeline = None
        self.extractor = None
        self.stream_desc = None
        self.publisher = None
        self.control = None
        self.connected = False
        self.n_windows = 0
        self.n_stale = 0
        self._marker_inlet = None
        self.prompt_markers = None
        self._last_auto_adapt = -math.inf
        bundle_given = bundle is not None
        bundle = bundle or self._initial_bundle()
        if bundle is not None:
            self.install_bundle(bundle, persist=bundle_given)

    # ------------------------------------------------------------------ compatibility
    @property
    def bundle(self) -> SourceBundle | None:
        """The live source bundle (None before a model exists)."""
        return self.live.bundle if self.live is not None else None

    @property
    def version(self) -> int | None:
        """The live map version."""
        return self.live.version if self.live is not None else None

    @property
    def fit(self):
        """The fit running in the worker (:class:`.worker.Fit`), or None."""
        return self.worker.fit

    # ------------------------------------------------------------------ model state
    def _initial_bundle(self) -> SourceBundle | None:
        path = self.store.source_path()
        if path is not None and path.exists():
            return SourceBundle.load(path)
        if self.config.model.path:
            return SourceBundle.load(self.config.model.path)
        return None

    def new_map_meta(self, **fields) -> dict:
        """Meta stored with every map: the source fingerprint and the shift reference.

        Parameters
        ----------
        **fields
            The map's other metadata (reason, parent, fit statistics, ...).
        """
        return map_meta(self.live.fingerprint, self.watch.reference, **fields)

    def install_bundle(self, bundle: SourceBundle, persist: bool) -> None:
        """Make ``bundle`` the source model; resume its last live H or start at identity.

        A persisted live map is resumed only if it was fitted for this source model
        (same fingerprint); otherwise it is refused with a ``map_refused`` event and
        the identity map goes live.

        Parameters
        ----------
        bundle : SourceBundle
            The new source model.
        persist : bool
            Also write it to the state folder (a freshly trained model).
        """
        if persist or self.store.source_path() is None:
            self.store.save_source(bundle)
        fp = source_fingerprint(bundle.components)
        m = bundle.components.n_features
        resumed = resume_map(self.store, m, fp, fresh=persist)
        if resumed.refusal:
            self.last_error = resumed.refusal
            self.events.queue("map_refused", reason=resumed.refusal,
                              model=self.store.live_version())
        H, b, version = resumed.H, resumed.b, resumed.version
        reference = pick_reference(resumed.meta.get("shift_reference"),
                                   (bundle.meta or {}).get("shift_reference"))
        # components switch on the distribution-level (MMD) test beside the likelihood one
        ring = bundle.n_channels if self.config.stream.ring else None  # the ring test
        self.watch = ShiftWatch(m, reference, components=bundle.components, ring_channels=ring)
        rotation = stored_rotation(resumed.meta)
        if version is None:  # the identity map: no rotation
            rotation = 0.0
            version = self.store.save_map(H, b, map_meta(fp, reference, reason=IDENTITY_REASON,
                                                         objective=None, map_rotation=rotation))
            self.store.set_live(version)
        self.live = LiveModel.build(bundle, H, b, version, fp, rotation)
        self.speed = self.make_speed(bundle)
        self.post.reset_votes()
        self.transition("model_loaded")

    def make_speed(self, bundle):
        """Proportional speed for ``bundle`` (None when it carries no calibration).

        Parameters
        ----------
        bundle : SourceBundle
            The source model whose ``meta["speed"]`` calibration is served.
        """
        from ..model.speed import LiveSpeed

        cal = (bundle.meta or {}).get("speed")
        if cal is None:
            return None
        try:
            return LiveSpeed(cal, self.config.speed)
        except (TypeError, ValueError) as exc:  # a bad record must not stop serving
            logger.warning("no proportional speed: %s", exc)
            return None

    def swap_map(self, H, b, version: int, reference: ShiftReference | None = None,
                 rotation: float | None = None) -> None:
        """Put a new map live (one assignment) and restart voting and the shift watch.

        Parameters
        ----------
        H : ndarray of shape (m, m)
            The new map.
        b : ndarray of shape (m,)
            The new offset.
        version : int
            Its version in the state store.
        reference : ShiftReference, optional
            The shift watch's reference for the new map; ``None``: learnt live.
        rotation : float, optional
            The map's ring rotation in electrode spacings (``map_rotation`` in its meta;
            None: unknown).
        """
        self.live = self.live.with_map(H, b, version, rotation)
        self.post.reset_votes()
        self.watch.reset(reference)
        if self.speed is not None:
            self.speed.reset()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> "Daemon":
        """Warm up kernels, bind sockets, start the loop thread; returns when serving.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the loop to serve.
        """
        self._thread = threading.Thread(target=self.serve, name="emtl-daemon", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"daemon did not start within {timeout} s")
        if self.last_error and self.publisher is None:
            raise RuntimeError(self.last_error)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the loop thread.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Ask the loop to stop (from a signal handler or the shutdown command)."""
        self._stop.set()

    def serve(self) -> None:
        """Run the loop in the calling thread until :meth:`stop` or ``shutdown``."""
        from ..io.zmq_control import ControlServer
        from ..io.zmq_pub import CurveConfig, Publisher
        from .handlers import handle_request
        from .warmup import warm_up_for

        cfg = self.config
        try:
            # one BLAS thread while serving: a second one busy-waits after every
            # per-window call (:mod:`.blas`); a user's OPENBLAS_NUM_THREADS wins
            limit_blas_threads(SERVING_BLAS_THREADS)
            warm_up_for(cfg, self.bundle)
            curve = CurveConfig.from_config(cfg.zmq)
            self.publisher = Publisher(cfg.zmq.pub, curve=curve, allow_remote=cfg.zmq.allow_remote)
            self.control = ControlServer(cfg.zmq.control, lambda req: handle_request(self, req),
                                         max_message_bytes=cfg.zmq.max_message_bytes, curve=curve,
                                         allow_remote=cfg.zmq.allow_remote)
            if cfg.stream.labels_stream:
                from ..io.lsl_inlet import MarkerInlet

                self._marker_inlet = MarkerInlet(cfg.stream.labels_stream)
            if cfg.calibration.markers_outlet:
                from ..io.lsl_outlet import MarkerOutlet

                self.prompt_markers = MarkerOutlet(
                    "emtl-prompts", source_id=f"emtl-prompts-{cfg.zmq.control}")
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("daemon start failed: %s", self.last_error)
            self._ready.set()
            self._close()
            if _RAISE:
                raise
            return
        self.events.bind(self.publisher.publish)
        self.event("state", state=self.fsm.state.value)
        self.events.flush()
        self._ready.set()
        logger.info("serving: pub %s, control %s", cfg.zmq.pub, cfg.zmq.control)
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as exc:  # contain, announce, keep serving
                    logger.exception("daemon loop error")
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.event("bad_input", reason=self.last_error)
                    if _RAISE:
                        raise
                    self._stop.wait(0.01)
        finally:
            self._close()

    def _close(self) -> None:
        self.worker.shutdown()
        self.events.unbind()
        for obj in (self.inlet, self.control, self.publisher, self._marker_inlet,
                    self.prompt_markers):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing is best effort
                    logger.debug("close failed", exc_info=True)
        if self.fsm.state != State.STOPPED:
            self.fsm.force(State.STOPPED)

    # ------------------------------------------------------------------ the loop
    def _missing(self) -> int | None:
        """Return how many samples the next window still needs (None: no stream)."""
        if self.pipeline is None or not self.connected:
            return None
        p = self.pipeline
        return max(p.windower.next_start + p.windower.window - p.ring.n_written, 0)

    def _step(self) -> None:
        missing = self._missing()
        lsl_wait = 0.0
        if self.fit is not None and missing is not None:
            self.control.poll_once(timeout_ms=int(FIT_POLL_S * 1000))
        elif missing is None:
            self.control.poll_once(timeout_ms=int(IDLE_WAIT_S * 1000))
        else:
            # Sleep in the control socket's poll until the window's last samples are
            # about to arrive, then block in LSL until exactly those have arrived: a
            # request is answered within MAX_WAIT_S, a window is classified as soon as
            # it is complete, and the loop wakes about twice per window, not at every
            # chunk the source sends.
            due = missing / self.pipeline.fs
            ahead = due - LSL_HANDOFF_S
            if ahead > 0:
                t0 = time.monotonic()
                self.control.poll_once(timeout_ms=max(1, int(min(ahead, MAX_WAIT_S) * 1000)))
                due -= time.monotonic() - t0  # a request may have ended the poll early
            else:
                self.control.poll_once(timeout_ms=0)
            if due <= LSL_HANDOFF_S:
                lsl_wait = min(max(due, 0.0) + LSL_HANDOFF_S, MAX_WAIT_S)
        if self._stop.is_set():
            return
        if self.pipeline is None:
            self._try_connect()
        else:  # after the first connect the inlet re-acquires a lost stream itself
            self._pull_once(lsl_wait, missing or 1)
        if self._marker_inlet is not None:
            self._poll_label_markers()
        calibrate.tick_session(self)
        calibrate.collect_fit(self)

    def _poll_label_markers(self) -> None:
        """Labels from an LSL Markers stream: a class name, "none" (stop) or "fit"."""
        from .handlers import cmd_fit, label_windows

        for marker, ts in self._marker_inlet.poll():
            word = marker.strip()
            try:
                if word.lower() == "fit":
                    cmd_fit(self)
                elif word.lower() in ("", "none", "stop"):
                    if self.session is not None and self.session.purpose == "manual":
                        self.session.set_label(None, ts)
                else:
                    label_windows(self, word, ts)
            except Exception as exc:  # a bad marker must not stop the daemon
                self.event("bad_input", reason=f"label marker {marker!r}: {exc}")

    def _expected_stream(self):
        cfg = self.config.stream
        if self.bundle is not None:
            return self.bundle.n_channels, self.bundle.fs
        return (cfg.channels or None), (cfg.rate or None)

    def _try_connect(self) -> None:
        from ..io.lsl_inlet import EMGInlet

        now = time.monotonic()
        if not self.link.may_try(now):
            return
        cfg = self.config.stream
        channels, rate = self._expected_stream()
        try:
            if self.inlet is None:
                # Short resolve attempts so the control socket stays responsive
                # while no stream is there; the back-off spaces them out.
                self.inlet = EMGInlet(name=cfg.name or None, stype=cfg.type or None,
                                      source_id=cfg.source_id or None,
                                      resolve_timeout=min(cfg.resolve_timeout_s, 0.25),
                                      max_buflen_s=cfg.max_buflen_s,
                                      expected_channels=channels, expected_rate=rate,
                                      lost_after_s=cfg.lost_after_s)
            desc = self.inlet.connect()
        except ChannelMismatch as exc:
            reason = str(exc)
            self.last_error = reason
            if self.link.refused(reason, now):  # say it once, not at every retry
                self.event("stream_refused", reason=reason)
                logger.error("%s", exc)
            self.inlet = None
            return
        except StreamError as exc:
            self.last_error = str(exc)
            self.link.not_found(now)
            return
        self.link.connected()
        self.connected = True
        self.stream_desc = desc
        self._build_pipeline(desc)
        self.event("stream_restored", name=desc.name, channels=desc.n_channels, rate=desc.rate)

    def _build_pipeline(self, desc) -> None:
        from ..pipeline.features import FeatureExtractor, FeaturePipeline
        from .bundle import filter_spec_from_config, make_filter

        cfg = self.config.features
        from_config = filter_spec_from_config(cfg)
        if self.bundle is not None:
            extractor = self.bundle.make_extractor()
            window_ms, step_ms = self.bundle.window_ms, self.bundle.step_ms
            # the filter the model was trained through (train/serve parity); [features]
            # only for a bundle written before filters were recorded
            filt = self.bundle.make_filter(desc.n_channels, desc.rate, fallback=from_config)
        else:
            extractor = FeatureExtractor(tuple(cfg.names), n_channels=desc.n_channels,
                                         fs=desc.rate, zc_threshold=cfg.zc_threshold,
                                         ssc_threshold=cfg.ssc_threshold)
            window_ms, step_ms = cfg.window_ms, cfg.step_ms
            filt = make_filter(from_config, desc.n_channels, desc.rate)
        self.pipeline = FeaturePipeline(extractor, window_ms, step_ms, filter=filt,
                                        max_abs_sample=self.config.stream.max_abs_sample)
        self.events.reset_nonfinite()  # the new pipeline counts from zero
        self.extractor = extractor

    def _pull_once(self, timeout: float = 0.0, min_samples: int = 1) -> None:
        samples, stamps = self.inlet.pull(timeout=timeout, min_samples=min_samples)
        refusal = self.inlet.refusal
        if refusal is not None and self.link.refused_seen(refusal):
            # a stream of the wrong shape appeared while ours is gone: say so once
            self.last_error = refusal
            self.event("stream_refused", reason=refusal)
        if self.inlet.connected != self.connected:
            self.connected = self.inlet.connected
            if self.connected:
                self.link.connected()
                self.event("stream_restored", name=self.inlet.description.name,
                           reconnects=self.inlet.n_reconnects)
            else:
                self.link.lost(f"lost: no samples for "
                               f"{self.config.stream.lost_after_s:g} s; reconnecting")
                self.event("stream_lost", reason=f"no samples for "
                           f"{self.config.stream.lost_after_s:g} s; reconnecting",
                           name=self.inlet.description.name)
                self.pipeline.mark_gap()
                if self.session is not None and self.session.purpose != "manual":
                    calibrate.abort_session(self, "the EMG stream was lost during the calibration")
        if self.inlet.gap_pending:
            self.pipeline.mark_gap()
            self.inlet.gap_pending = False
        if len(samples) == 0:
            return
        skipped = self.pipeline.n_skipped_nonfinite
        windows = self.pipeline.push(samples, stamps)
        if self.pipeline.n_skipped_nonfinite > skipped:
            self.events.nonfinite_skipped(self.pipeline.n_skipped_nonfinite,
                                          self.pipeline.n_out_of_range,
                                          self.pipeline.max_abs_sample)
        for w in windows:
            self._on_window(w)

    def _on_window(self, w) -> None:
        from ..io import protocol

        self.n_windows += 1
        now = float(self.clock())
        # Stale-window policy (docs/protocol.md): a window whose last sample is older
        # than [classify] stale_after_s when it is classified (buffered samples after a
        # reconnect or a stalled source) is published with "stale": true and feeds
        # neither the vote, the shift watch nor a calibration session.
        stale = now - float(w.t_last) > self.config.classify.stale_after_s
        if self.session is not None and not stale:
            raw = self.pipeline.ring.read(w.start, w.stop)[0] if self.session.prompted or \
                self.session.purpose == "manual" else None
            self.session.add_window(w.x, float(w.t_last), raw=raw)
        live = self.live
        if live is None:
            return
        feed_watch = self.config.classify.shift_detect and not stale
        # the ring test's rolled windows: scored in the class decision's kernel call
        # when they are cheap, after the prediction is out when they are not
        rows = self.watch.ring_rows(w.x.shape[0]) if feed_watch else None
        inline = rows is not None and rows.size * w.x.shape[0] <= RING_ROWS_INLINE_MAX
        score = live.classifier.classify_window(w.x, rows if inline else None)
        index, proba, z = score.index, score.proba, score.z
        if stale:
            self.n_stale += 1
            if index < 0 or not np.all(np.isfinite(proba)):
                return
            decision_seq = self.post.seq + 1
            self.post.seq = decision_seq
            confidence = float(proba[index])
            decision = (decision_seq, index, confidence, confidence < self.post.reject_below)
        else:
            d = self.post.process(index, proba)
            if d is None:  # classification failed: no seq, no vote
                return
            decision = (d.seq, d.index, d.confidence, d.rejected)
        seq, index, confidence, rejected = decision
        extra = {}
        if self.speed is not None:  # from the same z as the class decision
            speed, bad = self.speed.update(z, w.x, int(index), rejected=bool(rejected or stale))
            extra["speed"] = speed
            if bad is not None:
                self.events.bad_speed(bad)
        self.publisher.publish("pred", protocol.pred_msg(
            seq=seq, t=float(w.t_last), t_pub=float(self.clock()), label=live.label(index),
            index=int(index), proba=proba, confidence=confidence, rejected=bool(rejected),
            model=int(live.version), stale=bool(stale), **extra))
        if self.config.zmq.publish_features and self.publisher.wants("feat"):
            # the feature vector is the largest message: built only when someone listens
            self.publisher.publish("feat", protocol.feat_msg(
                seq=seq, t=float(w.t_last), x=z, model=int(live.version)))
        if feed_watch:
            ring_ll, ring_index = score.row_log_marginals, score.row_index
            if rows is not None and not inline:
                ring_ll, ring_index = live.classifier.score_rows(w.x, rows)
            hit = self.watch.update(score.log_marginal, z, float(w.t_last),
                                    ring_ll=ring_ll, ring_index=ring_index)
            if hit is not None:
                self.event("shift_suspected", **hit)
                self._maybe_auto_adapt()

    def _maybe_auto_adapt(self) -> None:
        """``[adapt] auto``: start a zero-label recalibration when the shift watch fires."""
        cfg = self.config.adapt
        now = time.monotonic()
        if not cfg.auto or now - self._last_auto_adapt < cfg.cooldown_s:
            return
        if self.session is not None or self.fit is not None or not self.connected:
            return
        self._last_auto_adapt = now
        try:
            calibrate.begin_unlabelled(self, cfg.seconds, trigger="shift_suspected")
        except EmtlError as exc:
            logger.warning("automatic zero-label recalibration not started: %s", exc)

    # ------------------------------------------------------------------ sessions
    def transition(self, event: str, **fields) -> None:
        """Apply a state-machine event; every change of state is published.

        Parameters
        ----------
        event : str
            A :class:`~.state.StateMachine` event (``"start_fitting"``, ``"fail"``, ...).
        **fields
            Extra fields of the ``state`` event.
        """
        old = self.fsm.state
        new = self.fsm.transition(event)
        if new != old:
            self.event("state", state=new.value, **fields)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        """Return the ``status`` reply (:func:`.status.build_status`)."""
        return build_status(
            state=self.fsm.state.value, version=self.version,
            classes=self.bundle.classes if self.bundle else [],
            stream_name=self.config.stream.name, desc=self.stream_desc,
            connected=self.connected, reason=self.link.reason(), windows=self.n_windows,
            stale_windows=self.n_stale, inlet=self.inlet, pipeline=self.pipeline,
            uptime_s=time.monotonic() - self._started_at, maps=self.store.list_maps(),
            last_error=self.last_error, session=self.session, now=float(self.clock()))

    # ------------------------------------------------------------------ events
    def event(self, kind: str, **fields) -> None:
        """Publish one ``event`` (logged too; :class:`.events.Events`).

        Parameters
        ----------
        kind : str
            The event's ``kind``.
        **fields
            Its other fields.
        """
        self.events.emit(kind, **fields)


def run(config, bundle=None) -> int:
    """Run the daemon in the foreground; SIGINT/SIGTERM stop it cleanly. Returns an exit code.

    Parameters
    ----------
    config : Config
        The daemon's configuration.
    bundle : SourceBundle, optional
        A source model to start with; default: the one in the state folder, if any.
    """
    import signal

    daemon = Daemon(config, bundle=bundle)

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        daemon.request_stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    daemon.serve()
    if daemon.last_error and daemon.publisher is None:
        raise EmtlError(daemon.last_error)
    return 0
