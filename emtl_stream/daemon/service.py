"""The daemon: LSL in, predictions out, recalibration in the background.

One loop thread owns the LSL inlet, the feature pipeline, the ZeroMQ publisher and
the control socket, so none of them needs a lock: control requests are handled
between two pulls, in the same thread. Fits (transfer EM, source training) run in
a single worker thread (``ThreadPoolExecutor(max_workers=1)``); the numba kernels
release the GIL, so predictions keep flowing with the old H. The loop collects a
finished fit and swaps the classifier in one assignment, which is atomic for the
next window.

Every failure in the loop is logged, announced as an ``event`` and contained:
the daemon keeps serving with its last good model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError, ChannelMismatch, EmtlError, StreamError
from ..logs import logger
from .bundle import SourceBundle, fit_source_model, make_bundle, transfer_kwargs
from .calibration import BurstCollector, PromptSchedule, check_burst
from .state import State, StateMachine

_RAISE = os.environ.get("EMTL_RAISE_BACKGROUND_ERRORS", "") == "1"


@dataclass
class _Calibration:
    """A prompted session in progress (recalibration or source training)."""

    purpose: str  # "recalibrate" | "train" | "manual"
    schedule: PromptSchedule | None
    collector: BurstCollector
    t0: float
    step_index: int = -1
    last_window_t: float = float("-inf")


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
        self.bundle = bundle or self._initial_bundle()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emtl-fit")
        self._fit_future: concurrent.futures.Future | None = None
        self._fit_kind = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._started_at = time.monotonic()
        self._seq = 0
        self._n_windows = 0
        self._votes = collections.deque(maxlen=max(1, int(config.classify.vote_windows)))
        self._recent_loglik = collections.deque(maxlen=40)
        self._shift_baseline: tuple[float, float] | None = None
        self._shift_reference: list[float] = []
        self._shift_flagged = False
        self._calibration: _Calibration | None = None
        self._manual_label = None
        self._label_since = 0.0
        self._marker_inlet = None
        self._prompt_markers = None
        self._last_error = ""
        self.inlet = None
        self.pipeline = None
        self.publisher = None
        self.control = None
        self._connected = False
        self._next_connect = 0.0
        self._connect_backoff = 0.5
        self._bad_input_announced = 0
        self._classifier = None
        self._H = self._b = None
        self.version = None
        if self.bundle is not None:
            self._install_bundle(self.bundle, persist=bundle is not None)

    # ------------------------------------------------------------------ model state
    def _initial_bundle(self) -> SourceBundle | None:
        path = self.store.source_path()
        if path is not None and path.exists():
            return SourceBundle.load(path)
        if self.config.model.path:
            return SourceBundle.load(self.config.model.path)
        return None

    def _install_bundle(self, bundle: SourceBundle, persist: bool) -> None:
        """Make ``bundle`` the source model; resume its last live H or start at identity."""
        from ..model.classify import MappedClassifier

        self.bundle = bundle
        if persist or self.store.source_path() is None:
            self.store.save_source(bundle)
        m = bundle.components.n_features
        version = self.store.live_version()
        H, b = np.eye(m), np.zeros(m)
        if version is not None:
            try:
                H, b, _ = self.store.load_map(version)
                if H.shape != (m, m):
                    raise ValueError(f"map {version} has shape {H.shape}, model needs {(m, m)}")
            except Exception as exc:  # a map of another model: start fresh
                logger.warning("not resuming map %s: %s", version, exc)
                version = None
                H, b = np.eye(m), np.zeros(m)
        if version is None or persist:
            version = self.store.save_map(H, b, {"reason": "new source model", "objective": None})
            self.store.set_live(version)
        self._classifier = MappedClassifier(bundle.components, H, b)
        self._H, self._b, self.version = H, b, version
        self.fsm.transition("model_loaded")

    def _swap_map(self, H, b, version) -> None:
        from ..model.classify import MappedClassifier

        # One assignment: the next window uses the new map, the current one the old.
        self._classifier = MappedClassifier(self.bundle.components, H, b)
        self._H, self._b, self.version = H, b, version
        self._votes.clear()
        self._reset_shift_watch()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> "Daemon":
        """Warm up kernels, bind sockets, start the loop thread; returns when serving."""
        self._thread = threading.Thread(target=self.serve, name="emtl-daemon", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"daemon did not start within {timeout} s")
        if self._last_error and self.publisher is None:
            raise RuntimeError(self._last_error)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def serve(self) -> None:
        """Run the loop in the calling thread until :meth:`stop` or ``shutdown``."""
        from ..io.zmq_control import ControlServer
        from ..io.zmq_pub import CurveConfig, Publisher
        from .warmup import warm_up_for

        cfg = self.config
        try:
            warm_up_for(cfg, self.bundle)
            curve = CurveConfig.from_config(cfg.zmq)
            self.publisher = Publisher(cfg.zmq.pub, curve=curve, allow_remote=cfg.zmq.allow_remote)
            self.control = ControlServer(cfg.zmq.control, self._handle_request,
                                         max_message_bytes=cfg.zmq.max_message_bytes, curve=curve,
                                         allow_remote=cfg.zmq.allow_remote)
            if cfg.stream.labels_stream:
                from ..io.lsl_inlet import MarkerInlet

                self._marker_inlet = MarkerInlet(cfg.stream.labels_stream)
            if cfg.calibration.markers_outlet:
                from ..io.lsl_outlet import MarkerOutlet

                self._prompt_markers = MarkerOutlet(
                    "emtl-prompts", source_id=f"emtl-prompts-{cfg.zmq.control}")
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.error("daemon start failed: %s", self._last_error)
            self._ready.set()
            self._close()
            if _RAISE:
                raise
            return
        self._event("state", state=self.fsm.state.value)
        self._ready.set()
        logger.info("serving: pub %s, control %s", cfg.zmq.pub, cfg.zmq.control)
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception as exc:  # contain, announce, keep serving
                    logger.exception("daemon loop error")
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self._event("bad_input", reason=self._last_error)
                    if _RAISE:
                        raise
                    time.sleep(0.01)
        finally:
            self._close()

    def _close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for obj in (self.inlet, self.control, self.publisher, self._marker_inlet,
                    self._prompt_markers):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # closing is best effort
                    logger.debug("close failed", exc_info=True)
        if self.fsm.state != State.STOPPED:
            self.fsm.force(State.STOPPED)

    # ------------------------------------------------------------------ the loop
    def _step(self) -> None:
        self.control.poll_once(timeout_ms=1)
        if self.pipeline is None:
            self._try_connect()
        else:  # after the first connect the inlet re-acquires a lost stream itself
            self._pull_once()
        if self._marker_inlet is not None:
            self._poll_label_markers()
        self._tick_calibration()
        self._collect_fit()

    def _poll_label_markers(self) -> None:
        """Labels from an LSL Markers stream: a class name, "none" (stop) or "fit"."""
        for marker, ts in self._marker_inlet.poll():
            word = marker.strip()
            try:
                if word.lower() == "fit":
                    self._cmd_fit()
                elif word.lower() in ("", "none", "stop"):
                    if self._calibration is not None and self._calibration.purpose == "manual":
                        self._manual_label = None
                else:
                    self._cmd_label(word, _since=ts)
            except Exception as exc:  # a bad marker must not stop the daemon
                self._event("bad_input", reason=f"label marker {marker!r}: {exc}")

    def _expected_stream(self):
        cfg = self.config.stream
        if self.bundle is not None:
            return self.bundle.n_channels, self.bundle.fs
        return (cfg.channels or None), (cfg.rate or None)

    def _try_connect(self) -> None:
        from ..io.lsl_inlet import EMGInlet

        now = time.monotonic()
        if now < self._next_connect:
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
            self._last_error = str(exc)
            self._event("bad_input", reason=str(exc))
            logger.error("%s", exc)
            self.inlet = None
            self._next_connect = now + 5.0
            return
        except StreamError as exc:
            self._last_error = str(exc)
            self._next_connect = now + self._connect_backoff
            self._connect_backoff = min(self._connect_backoff * 2, 5.0)
            return
        self._connect_backoff = 0.5
        self._connected = True
        self._stream_desc = desc
        self._build_pipeline(desc)
        self._event("stream_restored", name=desc.name, channels=desc.n_channels, rate=desc.rate)

    def _build_pipeline(self, desc) -> None:
        from ..pipeline.features import FeatureExtractor, FeaturePipeline
        from ..pipeline.filters import StreamingFilter

        cfg = self.config.features
        if self.bundle is not None:
            extractor = self.bundle.make_extractor()
            window_ms, step_ms = self.bundle.window_ms, self.bundle.step_ms
        else:
            extractor = FeatureExtractor(tuple(cfg.names), n_channels=desc.n_channels,
                                         fs=desc.rate, zc_threshold=cfg.zc_threshold,
                                         ssc_threshold=cfg.ssc_threshold)
            window_ms, step_ms = cfg.window_ms, cfg.step_ms
        filt = None
        if cfg.bandpass or cfg.notch:
            filt = StreamingFilter(desc.rate, desc.n_channels,
                                   bandpass=tuple(cfg.bandpass) if cfg.bandpass else None,
                                   notch=cfg.notch or None)
        self.pipeline = FeaturePipeline(extractor, window_ms, step_ms, filter=filt)
        self._extractor = extractor

    def _pull_once(self) -> None:
        samples, stamps = self.inlet.pull(timeout=0.0)
        if self.inlet.connected != self._connected:
            self._connected = self.inlet.connected
            if self._connected:
                self._event("stream_restored", name=self.inlet.description.name,
                            reconnects=self.inlet.n_reconnects)
            else:
                self._event("stream_lost", reason=f"no samples for "
                            f"{self.config.stream.lost_after_s:g} s; reconnecting",
                            name=self.inlet.description.name)
                self.pipeline.mark_gap()
                if self._calibration is not None and self._calibration.purpose != "manual":
                    self._abort_session("the EMG stream was lost during the calibration")
        if self.inlet.gap_pending:
            self.pipeline.mark_gap()
            self.inlet.gap_pending = False
        if len(samples) == 0:
            return
        skipped = self.pipeline.n_skipped_nonfinite
        windows = self.pipeline.push(samples, stamps)
        if self.pipeline.n_skipped_nonfinite > skipped:
            self._announce_bad_input(self.pipeline.n_skipped_nonfinite - skipped)
        for w in windows:
            self._on_window(w)

    def _announce_bad_input(self, n: int) -> None:
        now = time.monotonic()
        if now - self._bad_input_announced > 1.0:  # at most one event per second
            self._bad_input_announced = now
            self._event("bad_input", reason=f"{n} window(s) with NaN/inf samples skipped",
                        skipped_total=self.pipeline.n_skipped_nonfinite)

    def _on_window(self, w) -> None:
        from ..io import protocol

        self._n_windows += 1
        if self._calibration is not None:
            self._label_window(w)
        clf = self._classifier
        if clf is None:
            return
        index, proba = clf.classify_one(w.x)
        confidence = float(proba[index])  # of this window, before voting
        if self._votes.maxlen > 1:  # majority over the last vote_windows windows
            self._votes.append(index)
            index = collections.Counter(self._votes).most_common(1)[0][0]
        rejected = confidence < self.config.classify.reject_below
        self._seq += 1
        classes = self.bundle.classes
        self.publisher.publish("pred", protocol.pred_msg(
            seq=self._seq, t=float(w.t_last), t_pub=float(self.clock()), label=classes[index],
            index=int(index), proba=[float(p) for p in proba], confidence=confidence,
            rejected=bool(rejected), model=int(self.version)))
        if self.config.zmq.publish_features:
            z = self._H @ w.x + self._b
            self.publisher.publish("feat", protocol.feat_msg(
                seq=self._seq, t=float(w.t_last), x=[float(v) for v in z], model=int(self.version)))
        if self.config.classify.shift_detect:
            self._watch_for_shift(w.x)

    # ------------------------------------------------------------------ shift detection
    # The burst a map was fitted on is in-sample (optimistic), so the reference
    # level is taken from the first live windows after each swap instead: their
    # median marginal log-likelihood and a robust spread (1.4826 MAD). A running
    # median over the last windows that falls more than max(4 spreads, 1 nat per
    # feature) below it raises shift_suspected once; it re-arms near the reference.
    SHIFT_REFERENCE_WINDOWS = 80

    def _watch_for_shift(self, x) -> None:
        ll = float(self._classifier.log_marginal(x[None])[0])
        if not np.isfinite(ll):
            return
        if self._shift_baseline is None:
            self._shift_reference.append(ll)
            if len(self._shift_reference) >= self.SHIFT_REFERENCE_WINDOWS:
                ref = np.asarray(self._shift_reference)
                mu = float(np.median(ref))
                sd = float(1.4826 * np.median(np.abs(ref - mu)))
                self._shift_baseline = (mu, max(sd, 1e-6))
                self._shift_reference = []
            return
        self._recent_loglik.append(ll)
        if len(self._recent_loglik) < self._recent_loglik.maxlen:
            return
        mu, sd = self._shift_baseline
        level = float(np.median(self._recent_loglik))
        margin = max(4.0 * sd, float(self._H.shape[0]))
        if not self._shift_flagged and level < mu - margin:
            self._shift_flagged = True
            self._event("shift_suspected", log_likelihood=level, baseline=mu, spread=sd,
                        reason="recent windows are much less likely under the source model "
                               "than after the last calibration; consider recalibrating")
        elif self._shift_flagged and level > mu - 2.0 * sd:
            self._shift_flagged = False

    def _reset_shift_watch(self) -> None:
        self._shift_baseline = None
        self._shift_reference = []
        self._recent_loglik.clear()
        self._shift_flagged = False

    # ------------------------------------------------------------------ calibration
    def _begin_session(self, purpose: str, classes, seconds, repetitions) -> dict:
        cal = self.config.calibration
        schedule = PromptSchedule(list(classes), float(seconds), int(repetitions),
                                  cal.lead_in_s, cal.rest_s)
        self.fsm.transition("start_prompting")
        self._calibration = _Calibration(purpose, schedule, BurstCollector(),
                                         t0=float(self.clock()))
        self._event("calibration_started", purpose=purpose, classes=list(classes),
                    seconds_per_class=float(seconds), repetitions=int(repetitions),
                    duration_s=schedule.duration_s)
        return {"state": "calibrating", "duration_s": schedule.duration_s}

    def _label_window(self, w) -> None:
        cal = self._calibration
        cal.last_window_t = max(cal.last_window_t, float(w.t_last))
        if cal.purpose == "manual":
            # only windows that start after the label was given belong to it
            label = (self._manual_label
                     if w.t_last - self.pipeline.window_s >= self._label_since else None)
        else:
            label = cal.schedule.label_for_window(w.t_last - cal.t0, self.pipeline.window_s)
        if label is not None:
            raw = self.pipeline.ring.read(w.start, w.stop)[0]
            cal.collector.add(w.x, label, w.t_last, raw=raw)

    def _tick_calibration(self) -> None:
        cal = self._calibration
        if cal is None or cal.schedule is None:
            return
        from ..io import protocol

        elapsed = float(self.clock()) - cal.t0
        step = cal.schedule.at(elapsed)
        if step is not None:
            if step.index != cal.step_index:
                cal.step_index = step.index
                if self._prompt_markers is not None:
                    self._prompt_markers.push(step.label)
                if self.fsm.state == State.PROMPTING and step.kind == "class":
                    self.fsm.transition("start_recording")
            self.publisher.publish("prompt", protocol.prompt_msg(
                cls=step.label, remaining_s=max(0.0, step.start_s + step.duration_s - elapsed),
                step=step.index + 1, of=len(cal.schedule.steps)))
            return
        # Schedule over: fit as soon as a window ending after the schedule was pulled
        # (all burst windows are in); the wall-clock wait is a fallback for a stalled stream.
        if cal.last_window_t < cal.t0 + cal.schedule.duration_s and (
                elapsed < cal.schedule.duration_s + 0.5):
            return
        self._finish_session()

    def _finish_session(self) -> dict:
        cal = self._calibration
        self._calibration = None
        X, labels, stamps = cal.collector.arrays()
        classes = self.bundle.classes if (self.bundle and cal.purpose != "train") else None
        try:
            if cal.purpose == "train":
                check_burst(X, labels, sorted(set(labels)),
                            self.config.calibration.min_windows_per_class, require_all=True)
            else:
                check_burst(X, labels, classes, self.config.calibration.min_windows_per_class)
        except CalibrationError as exc:
            return self._calibration_failed(str(exc))
        burst_id = self.store.save_burst(
            cal.collector.to_arrays(),
            {"purpose": cal.purpose, "n_windows": int(len(X)), "model": self.version,
             "counts": cal.collector.counts(), "window_ms": self.pipeline.window_ms,
             "step_ms": self.pipeline.step_ms})
        self.fsm.transition("start_fitting")
        self._event("state", state=self.fsm.state.value, burst=burst_id, windows=int(len(X)))
        if cal.purpose == "train":
            self._fit_kind = ("train", burst_id)
            self._fit_future = self._executor.submit(self._train_job, X, labels)
        else:
            self._fit_kind = ("transfer", burst_id)
            self._fit_future = self._executor.submit(
                self._transfer_job, X, labels, self._H.copy(), self._b.copy())
        return {"state": "fitting", "burst": burst_id, "windows": int(len(X))}

    def _calibration_failed(self, reason: str) -> dict:
        self._last_error = reason
        if self.fsm.can("fail"):
            self.fsm.transition("fail")
        self._event("calibration_failed", reason=reason, model=self.version)
        return {"state": self.fsm.state.value, "error": reason}

    def _abort_session(self, reason: str) -> None:
        self._calibration = None
        self._manual_label = None
        self._calibration_failed(reason)

    def _transfer_job(self, X, labels, H_cur, b_cur):
        """Worker thread: fit H on a burst; returns the result dict (never raises)."""
        from ..model.transfer import TransferEM

        t0 = time.perf_counter()
        kw = transfer_kwargs(self.config, self.bundle.n_channels)
        if self.config.transfer.shrink_to == "current":
            kw["shrink_to"] = H_cur
        ring = self.bundle.n_channels if (self.config.stream.ring and self.config.transfer.ring_search
                                          and H_cur.shape[0] % self.bundle.n_channels == 0) else None
        tem = TransferEM(self.bundle.components, ring_channels=ring, **kw)
        tem.fit(X, labels, H_init=H_cur, b_init=b_cur if kw.get("bias") else None)
        H, b = tem.H_, tem.b_
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(b))):
            raise CalibrationError("transfer EM returned a non-finite map; the old map stays live")
        new_obj = float(tem.objective(X, labels))
        old_obj = float(tem.objective(X, labels, H=H_cur, b=b_cur))
        return dict(H=H, b=b, objective=new_obj, previous_objective=old_obj,
                    n_iter=int(tem.n_iter_), converged=bool(tem.converged_),
                    roll=getattr(tem, "best_roll_", None), trace=list(map(float, tem.log_likelihood_)),
                    fit_s=time.perf_counter() - t0)

    def _train_job(self, X, labels):
        cfg = self.config.model
        t0 = time.perf_counter()
        model = fit_source_model(X, np.asarray(labels), kind=cfg.kind,
                                 covariance_type=cfg.covariance_type,
                                 n_components_per_class=cfg.n_components_per_class)
        bundle = make_bundle(model, self._extractor, self.pipeline.window_ms, self.pipeline.step_ms,
                             self._stream_desc.n_channels, self._stream_desc.rate,
                             source="prompted train session")
        return dict(bundle=bundle, fit_s=time.perf_counter() - t0,
                    accuracy=float(np.mean(model.predict(X) == np.asarray(labels))))

    def _collect_fit(self) -> None:
        fut = self._fit_future
        if fut is None or not fut.done():
            return
        self._fit_future = None
        kind, burst_id = self._fit_kind
        try:
            result = fut.result()
        except Exception as exc:
            logger.warning("fit failed: %s", exc, exc_info=True)
            self._calibration_failed(f"{type(exc).__name__}: {exc}")
            return
        if kind == "train":
            self.store.set_live(None)
            self._install_bundle(result["bundle"], persist=True)
            self.fsm.transition("fit_done")
            self._reset_shift_watch()
            self._event("model_swapped", model=self.version, reason="new source model",
                        classes=self.bundle.classes, fit_s=result["fit_s"])
            self._event("calibration_done", purpose="train", model=self.version,
                        train_accuracy=result["accuracy"], fit_s=result["fit_s"])
            return
        new, old = result["objective"], result["previous_objective"]
        if not (np.isfinite(new) and new >= old):
            self._calibration_failed(
                f"new map does not beat the current one on the burst (penalised log-likelihood "
                f"{new:.4g} vs {old:.4g}); map {self.version} stays live")
            return
        version = self.store.save_map(result["H"], result["b"], {
            "burst": burst_id, "objective": new, "previous_objective": old,
            "parent": self.version, "n_iter": result["n_iter"], "roll": result["roll"],
            "converged": result["converged"], "fit_s": result["fit_s"],
        })
        self.store.set_live(version)
        self._swap_map(result["H"], result["b"], version)
        self.fsm.transition("fit_done")
        self._reset_shift_watch()
        self.last_fit = result
        self._event("model_swapped", model=version, reason="recalibration", burst=burst_id)
        self._event("calibration_done", model=version, objective=new, previous_objective=old,
                    n_iter=result["n_iter"], roll=result["roll"], fit_s=result["fit_s"])

    # ------------------------------------------------------------------ control
    def _handle_request(self, req) -> dict:
        handler = getattr(self, f"_cmd_{req.cmd}", None)
        if handler is None:  # protocol.py already refuses unknown commands
            raise ValueError(f"unknown command {req.cmd!r}")
        return handler(**req.fields)

    def _cmd_status(self) -> dict:
        desc = getattr(self, "_stream_desc", None)
        cal = self._calibration
        out = {
            "state": self.fsm.state.value,
            "model": self.version,
            "classes": self.bundle.classes if self.bundle else [],
            "stream": {
                "name": desc.name if desc else self.config.stream.name,
                "channels": desc.n_channels if desc else None,
                "rate": desc.rate if desc else None,
                "connected": bool(self._connected),
            },
            "windows": self._n_windows,
            "dropped": int(getattr(self.inlet, "n_lost_samples", 0) or 0)
            + int(getattr(self.pipeline, "n_skipped_nonfinite", 0) or 0),
            "uptime_s": time.monotonic() - self._started_at,
            "maps": [m["version"] for m in self.store.list_maps()],
            "last_error": self._last_error,
        }
        if cal is not None and cal.schedule is not None:
            out["calibration"] = {"purpose": cal.purpose, "elapsed_s": float(self.clock()) - cal.t0,
                                  "duration_s": cal.schedule.duration_s,
                                  "windows": cal.collector.n_windows}
        return out

    def _require_idle(self, what: str) -> None:
        if self._calibration is not None or self._fit_future is not None:
            raise CalibrationError(f"cannot {what}: a calibration is in progress "
                                   f"(state {self.fsm.state.value}); send cancel first")

    def _cmd_recalibrate(self, classes=None, seconds_per_class=None, repetitions=None) -> dict:
        if self.bundle is None:
            raise CalibrationError("no source model yet: train one first (train command)")
        self._require_idle("recalibrate")
        if not self._connected:
            raise StreamError("no EMG stream connected; recalibration needs live data")
        known = self.bundle.classes
        classes = list(classes) if classes else list(self.config.calibration.classes or known)
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise CalibrationError(f"unknown class(es) {unknown}; the model knows {known}")
        cal = self.config.calibration
        return self._begin_session("recalibrate", classes,
                                   seconds_per_class or cal.seconds_per_class,
                                   repetitions or cal.repetitions)

    def _cmd_train(self, classes=None, seconds_per_class=None, repetitions=None) -> dict:
        self._require_idle("train")
        if not self._connected:
            raise StreamError("no EMG stream connected; training needs live data")
        classes = list(classes or self.config.model.classes or (self.bundle.classes if self.bundle else []))
        if len(classes) < 2:
            raise CalibrationError("train needs at least two classes ([model] classes or the "
                                   "'classes' field)")
        cal = self.config.calibration
        return self._begin_session("train", classes,
                                   seconds_per_class or cal.train_seconds_per_class,
                                   repetitions or cal.repetitions)

    def _cmd_label(self, label=None, _since=None) -> dict:
        if label is not None and self.bundle is not None and label not in self.bundle.classes:
            raise CalibrationError(f"unknown class {label!r}; the model knows {self.bundle.classes}")
        if self._calibration is None:
            self._require_idle("label")
            if self.bundle is None:
                raise CalibrationError("no source model yet: train one first (train command)")
            self.fsm.transition("start_recording")
            self._calibration = _Calibration("manual", None, BurstCollector(), t0=float(self.clock()))
        elif self._calibration.purpose != "manual":
            raise CalibrationError("a prompted calibration is running; labels come from its prompts")
        self._manual_label = label
        self._label_since = float(self.clock()) if _since is None else float(_since)
        return {"state": self.fsm.state.value, "label": label,
                "windows": self._calibration.collector.n_windows}

    def _cmd_fit(self, min_windows=None) -> dict:
        cal = self._calibration
        if cal is None or cal.purpose != "manual":
            raise CalibrationError("nothing to fit: label windows first with the label command")
        if min_windows is not None and cal.collector.n_windows < int(min_windows):
            raise CalibrationError(f"only {cal.collector.n_windows} labelled windows, "
                                   f"fewer than min_windows={min_windows}")
        self._manual_label = None
        result = self._finish_session()
        if "error" in result:  # the calibration_failed event is out; the reply says so too
            raise CalibrationError(result["error"])
        return result

    def _cmd_cancel(self) -> dict:
        if self._calibration is None and self._fit_future is None:
            return {"state": self.fsm.state.value, "cancelled": False}
        self._calibration = None
        self._manual_label = None
        if self._fit_future is not None:
            self._fit_future.cancel()  # a running fit finishes, its result is dropped
            self._fit_future = None
        self.fsm.transition("cancel")
        self._event("calibration_failed", reason="cancelled by request", model=self.version)
        return {"state": self.fsm.state.value, "cancelled": True}

    def _cmd_rollback(self, version=None) -> dict:
        self._require_idle("roll back")
        maps = [m["version"] for m in self.store.list_maps()]
        if version is None:
            earlier = [v for v in maps if v < self.version]
            if not earlier:
                raise ValueError(f"no map before version {self.version} to roll back to")
            version = earlier[-1]
        if version not in maps:
            raise ValueError(f"no map version {version}; known versions {maps}")
        H, b, _ = self.store.load_map(version)
        if H.shape != self._H.shape:
            raise ValueError(f"map {version} has shape {H.shape}; the live model needs {self._H.shape}")
        previous = self.version
        self.store.set_live(version)
        self._swap_map(H, b, version)
        self._event("rollback", model=version, previous=previous)
        self._event("model_swapped", model=version, reason="rollback")
        return {"model": version, "previous": previous}

    def _cmd_save(self) -> dict:
        self.store.set_live(self.version)
        return {"model": self.version, "state_dir": str(self.store.root)}

    def _cmd_shutdown(self) -> dict:
        self._stop.set()
        return {"state": "stopping"}

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, **fields) -> None:
        from ..io import protocol

        if self.publisher is None:
            return
        logger.info("event %s %s", kind, fields)
        self.publisher.publish("event", protocol.event_msg(kind, t_pub=float(self.clock()), **fields))


def run(config, bundle=None) -> int:
    """Run the daemon in the foreground; SIGINT/SIGTERM stop it cleanly. Returns an exit code."""
    import signal

    daemon = Daemon(config, bundle=bundle)

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        daemon._stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    daemon.serve()
    if daemon._last_error and daemon.publisher is None:
        raise EmtlError(daemon._last_error)
    return 0
