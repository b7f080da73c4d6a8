#!/usr/bin/env python3
"""Soak and fuzz a real daemon: hostile control requests while it serves and recalibrates.

Processes (set up as in ``tools/bench_daemon.py``): a synthetic armband replayer that
performs whatever class the daemon prompts, and ``python -m emtl_stream run`` on free
loopback ports with a source model trained offline on the same seeded armband. This
process then, for ``--minutes``:

* subscribes to ``pred`` and ``event`` and checks that ``seq`` is contiguous (every
  gap is counted with its size) and how long the longest silence between two
  predictions is, overall and during recalibrations;
* fuzzes the control socket over REQ and DEALER: the hostile inputs known to have hurt
  (huge counts and durations, ``1e309``, nulls, ``"v": 1.0``, nesting thousands deep),
  random mutations of valid requests (every field of every command given a value of
  every JSON type and magnitude), random bytes, oversized and multi-frame messages.
  ``shutdown`` is never sent. Each request must get exactly one reply within
  ``--reply-timeout``; a request the daemon accepts that starts a session is followed
  by ``cancel``. During a real recalibration only malformed input is sent (a valid
  fuzzed ``cancel`` would end it);
* every ``--recal-every`` seconds runs a real prompted recalibration and waits for
  ``calibration_done``;
* samples the daemon's RSS every 5 s (Linux ``/proc``);
* finally (``--kill-cycles N``) kills the daemon with SIGKILL N times at a random
  moment of a recalibration (prompting, recording, fitting, saving), checks that the
  state directory loads, restarts it and checks that it serves the last live map.

It prints a JSON summary (and writes it with ``--json``). Counts and time are bounded
(``--max-requests``, ``--minutes``), never open-ended.

Usage::

    python tools/soak_daemon.py --minutes 3
    python tools/soak_daemon.py --minutes 10 --channels 8 --fs 200 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_daemon import Setup  # noqa: E402  (same replayer + daemon set-up)

from emtl_stream.io import protocol  # noqa: E402

# ----------------------------------------------------------------------------- inputs
KNOWN = [  # each of these once hurt the daemon (no reply, memory, endless session)
    b'{"v":1,"cmd":"recalibrate","repetitions":1000000000000000000000000000000}',
    b'{"v":1,"cmd":"recalibrate","repetitions":1000000}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e300}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e308,"repetitions":10}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e309}',
    b'{"v":1,"cmd":"train","repetitions":10000000}',
    b'{"v":1.0,"cmd":"status"}',
    b'{"v":true,"cmd":"status"}',
    b'{"v":1,"cmd":"recalibrate","classes":null}',
    b'{"v":1,"cmd":"train","classes":null,"seconds_per_class":null,"repetitions":null}',
    b'{"v":1,"cmd":"fit","min_windows":null}',
    b'{"v":1,"cmd":"rollback","version":null}',
    b"[" * 986 + b"]" * 986,
    b'{"v":1,"cmd":"status","x":' + b"[" * 20000 + b"]" * 20000 + b"}",
    b'{"a":' * 10000,
]

VALUES = [None, True, False, 0, -1, 1, 2, 3, 2**31, 2**63, 10**30, 10**4000, 0.0, -0.0, 0.5,
          1e-300, 1e30, 1e300, -1e300, "", "x", "rest", "a" * 65, "fi\nst", "ü" * 20, [],
          [None], ["rest"], ["rest", "rest"], [1, 2], ["c%d" % i for i in range(40)], {},
          {"a": 1}, [[[[[[["deep"]]]]]]]]


def _mutated(rng: random.Random) -> bytes:
    """A request built from a real command and field with a hostile value."""
    cmd = rng.choice([c for c in protocol.COMMANDS if c != "shutdown"])
    names = list(protocol.COMMANDS[cmd]) + ["extra", "v", "cmd"]
    obj: dict = {"v": 1, "cmd": cmd}
    for _ in range(rng.randint(0, 3)):
        obj[rng.choice(names)] = rng.choice(VALUES)
    if obj.get("cmd") == "shutdown":
        obj["cmd"] = "status"
    text = json.dumps(obj)
    if rng.random() < 0.05:
        text = text.replace("1e+30", "1e309")
    return text.encode()


def _random_bytes(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    if kind < 0.5:
        depth = rng.choice([5, 50, 500, 985, 986, 1000, 5000, 30000])
        return (b"[" * depth + b"]" * depth)[: 60000]
    if kind < 0.6:
        return b'{"v":1,"cmd":"status","pad":"' + b"x" * rng.choice([65000, 70000, 200000]) + b'"}'
    if kind < 0.8:
        return rng.choice(KNOWN)
    return "".join(rng.choice('{}[]":,1e-.aVvcmd nul') for _ in range(rng.randint(1, 300))
                   ).encode()


# ----------------------------------------------------------------------------- watchers
class Watcher(threading.Thread):
    """Subscribes to pred and event; counts seq gaps and the longest silence."""

    def __init__(self, ctx: zmq.Context, pub: str):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 100000)
        for topic in (b"pred ", b"event "):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(pub)
        self.stop = threading.Event()
        self.calibrating = threading.Event()
        self.n_pred = 0
        self.gaps = 0
        self.gap_windows = 0
        self.last_seq = None
        self.max_silence_s = 0.0
        self.max_silence_cal_s = 0.0
        self.events: dict[str, int] = {}
        self.done = threading.Event()
        self.bad_pred = 0
        self._last_t = None

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(200):
                continue
            topic, msg = protocol.decode_pub(self.sock.recv())
            now = time.monotonic()
            if topic == "event":
                self.events[msg["kind"]] = self.events.get(msg["kind"], 0) + 1
                if msg["kind"] in ("calibration_done", "calibration_failed"):
                    self.done.set()
                continue
            self.n_pred += 1
            proba = msg["proba"]
            if msg["index"] >= 0 and abs(sum(proba) - 1.0) > 1e-6:
                self.bad_pred += 1
            if self.last_seq is not None and msg["seq"] != self.last_seq + 1:
                self.gaps += 1
                self.gap_windows += msg["seq"] - self.last_seq - 1
            self.last_seq = msg["seq"]
            if self._last_t is not None:
                silence = now - self._last_t
                self.max_silence_s = max(self.max_silence_s, silence)
                if self.calibrating.is_set():
                    self.max_silence_cal_s = max(self.max_silence_cal_s, silence)
            self._last_t = now
        self.sock.close(linger=0)


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------- fuzzing
class Fuzzer:
    """Sends one request at a time over REQ or DEALER and checks its single reply."""

    def __init__(self, ctx: zmq.Context, control: str, timeout_s: float):
        self.ctx, self.control, self.timeout_ms = ctx, control, int(timeout_s * 1000)
        self.req = self._socket(zmq.REQ)
        self.dealer = self._socket(zmq.DEALER)
        self.counts = {"sent": 0, "ok_false": 0, "ok_true": 0, "no_reply": 0,
                       "extra_reply": 0, "bad_reply": 0, "sessions_cancelled": 0,
                       "req": 0, "dealer": 0}
        self.accepted: dict[str, int] = {}

    def _socket(self, kind):
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.control)
        return s

    def ask(self, body: bytes, via_dealer: bool, frames: list[bytes] | None = None):
        self.counts["sent"] += 1
        self.counts["dealer" if via_dealer else "req"] += 1
        sock = self.dealer if via_dealer else self.req
        if via_dealer:
            sock.send_multipart(frames if frames is not None else [b"", body])
        else:
            sock.send(body)
        if not sock.poll(self.timeout_ms):
            self.counts["no_reply"] += 1
            if not via_dealer:  # lazy pirate: a REQ socket without a reply is stuck
                self.req.close(linger=0)
                self.req = self._socket(zmq.REQ)
            return None
        try:
            reply = protocol.parse_reply(sock.recv_multipart()[-1])
        except Exception:  # noqa: BLE001 - counted, the soak goes on
            self.counts["bad_reply"] += 1
            return None
        if via_dealer and sock.poll(20):  # exactly one reply per request
            self.counts["extra_reply"] += 1
            sock.recv_multipart()
        self.counts["ok_true" if reply["ok"] else "ok_false"] += 1
        return reply

    def fuzz_one(self, rng: random.Random, mutate: bool = True) -> None:
        """One hostile request. ``mutate=False`` (during a real recalibration) sends only
        malformed input, never a valid request that could cancel the session."""
        body = _mutated(rng) if mutate and rng.random() < 0.6 else _random_bytes(rng)
        via_dealer = rng.random() < 0.5
        frames = None
        if via_dealer and rng.random() < 0.1:
            frames = rng.choice([[b"", body, b"tail"], [body], [b"", b"", body]])
        reply = self.ask(body, via_dealer, frames)
        if reply and reply["ok"]:
            try:
                cmd = json.loads(body)["cmd"]
            except Exception:  # noqa: BLE001
                cmd = "?"
            self.accepted[cmd] = self.accepted.get(cmd, 0) + 1
            if cmd in ("recalibrate", "train", "label"):
                self.ask(protocol.encode_request("cancel"), False)
                self.counts["sessions_cancelled"] += 1

    def close(self) -> None:
        self.req.close(linger=0)
        self.dealer.close(linger=0)


# ----------------------------------------------------------------------------- main
def _kill_cycles(setup, watcher, fuzz, n: int, seconds_per_class: float,
                 rng: random.Random) -> dict:
    """SIGKILL the daemon ``n`` times mid-recalibration; restart; check the state dir."""
    import os
    import signal
    import subprocess

    from emtl_stream.io.store import StateStore

    out = {"cycles": 0, "state_dir_loadable": 0, "resumed_live_map": 0, "restart_s": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    cmd = [sys.executable, "-m", "emtl_stream", "run", "--config",
           str(setup.tmp / "daemon.toml")]
    log = open(setup.tmp / "processes.log", "a")
    for _ in range(n):
        reply = fuzz.ask(protocol.encode_request("recalibrate",
                                                 seconds_per_class=seconds_per_class), False)
        duration = reply["duration_s"] if reply and reply["ok"] else 1.0
        time.sleep(rng.uniform(0.0, duration + 1.5))  # prompting ... fitting, saving
        proc = setup.procs[-1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        out["cycles"] += 1
        store = StateStore(setup.state)
        live = store.live_version()
        if live is not None:
            store.load_map(live)
            for m in store.list_maps():
                store.load_map(m["version"])
            out["state_dir_loadable"] += 1
        t0 = time.monotonic()
        setup.procs[-1] = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        watcher.last_seq = None  # a new process counts windows from 1 again
        deadline = t0 + 120.0
        status = None
        while time.monotonic() < deadline:
            status = fuzz.ask(protocol.encode_request("status"), False)
            if status and status["ok"] and status["stream"]["connected"]:
                break
            time.sleep(0.5)
        out["restart_s"].append(round(time.monotonic() - t0, 2))
        if status and status.get("model") == live:
            out["resumed_live_map"] += 1
    out["restart_s"] = {"max": max(out["restart_s"]) if out["restart_s"] else None,
                        "median": float(np.median(out["restart_s"])) if out["restart_s"]
                        else None}
    return out


def soak(minutes: float, channels: int, fs: float, max_requests: int, recal_every_s: float,
         seconds_per_class: float, reply_timeout_s: float, seed: int,
         kill_cycles: int = 0) -> dict:
    rng = random.Random(seed)
    ctx = zmq.Context()
    t_start = time.monotonic()
    summary: dict = {"minutes": minutes, "channels": channels, "fs": fs, "seed": seed}
    with Setup(channels, fs, 10.0, follow_prompts=True) as setup:
        daemon_pid = setup.procs[-1].pid
        watcher = Watcher(ctx, setup.pub)
        watcher.start()
        fuzz = Fuzzer(ctx, setup.control, reply_timeout_s)
        time.sleep(1.0)
        rss = [_rss_mb(daemon_pid)]
        t_end = time.monotonic() + 60.0 * minutes
        next_rss = time.monotonic() + 5.0
        next_recal = time.monotonic() + min(recal_every_s, 20.0)
        recals = {"asked": 0, "done": 0, "failed_or_timeout": 0}
        status_fail = 0
        for body in KNOWN:  # every known finding over both socket types first
            for via_dealer in (False, True):
                fuzz.ask(body, via_dealer)
        while time.monotonic() < t_end and fuzz.counts["sent"] < max_requests:
            now = time.monotonic()
            if now >= next_rss:
                rss.append(_rss_mb(daemon_pid))
                next_rss = now + 5.0
            if now >= next_recal:
                recals["asked"] += 1
                watcher.done.clear()
                reply = fuzz.ask(protocol.encode_request(
                    "recalibrate", seconds_per_class=seconds_per_class), False)
                if reply and reply["ok"]:
                    watcher.calibrating.set()
                    deadline = time.monotonic() + reply["duration_s"] + 60.0
                    while time.monotonic() < deadline and not watcher.done.is_set():
                        if rng.random() < 0.2:
                            fuzz.fuzz_one(rng, mutate=False)
                        else:
                            time.sleep(0.05)
                    watcher.calibrating.clear()
                    recals["done" if watcher.events.get("calibration_done", 0) > recals["done"]
                           else "failed_or_timeout"] += 1
                else:
                    recals["failed_or_timeout"] += 1
                next_recal = time.monotonic() + recal_every_s
                continue
            fuzz.fuzz_one(rng)
            if fuzz.counts["sent"] % 200 == 0:
                st = fuzz.ask(protocol.encode_request("status"), False)
                if not (st and st["ok"]):
                    status_fail += 1
            time.sleep(0.002)  # ~300 requests/s at most: a hostile client, not a flood test
        rss.append(_rss_mb(daemon_pid))
        pred_before_kills = (watcher.n_pred, watcher.gaps, watcher.gap_windows,
                             watcher.max_silence_s)
        requests_before_kills = dict(fuzz.counts)  # the restarts cost replies on purpose
        kills = _kill_cycles(setup, watcher, fuzz, kill_cycles, seconds_per_class, rng) \
            if kill_cycles else None
        final = fuzz.ask(protocol.encode_request("status"), False)
        alive = setup.procs[-1].poll() is None
        watcher.stop.set()
        watcher.join(5)
        fuzz.close()
    ctx.term()
    rss_ok = [r for r in rss if r is not None]
    summary.update({
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "requests": requests_before_kills, "accepted_by_cmd": fuzz.accepted,
        "status_failures": status_fail, "daemon_alive_at_end": alive,
        "final_state": final.get("state") if final else None,
        "recalibrations": recals,
        "kill_9": kills,
        "pred": {"n": pred_before_kills[0], "seq_gaps": pred_before_kills[1],
                 "windows_missing": pred_before_kills[2],
                 "max_silence_s": round(pred_before_kills[3], 3),
                 "max_silence_during_calibration_s": round(watcher.max_silence_cal_s, 3),
                 "proba_not_summing_to_1": watcher.bad_pred},
        "events": watcher.events,
        "rss_mb": {"first": rss_ok[0] if rss_ok else None,
                   "last": rss_ok[-1] if rss_ok else None,
                   "max": max(rss_ok) if rss_ok else None,
                   "growth_pct": round(100.0 * (rss_ok[-1] / rss_ok[0] - 1.0), 2)
                   if len(rss_ok) > 1 else None,
                   "samples": len(rss_ok)},
    })
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--fs", type=float, default=200.0)
    p.add_argument("--max-requests", type=int, default=100000)
    p.add_argument("--recal-every", type=float, default=45.0, help="seconds between recalibrations")
    p.add_argument("--seconds-per-class", type=float, default=1.0)
    p.add_argument("--reply-timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-cycles", type=int, default=0,
                   help="SIGKILL + restart the daemon this many times at the end")
    p.add_argument("--json", default=None, help="also write the summary here")
    a = p.parse_args(argv)
    out = soak(a.minutes, a.channels, a.fs, a.max_requests, a.recal_every,
               a.seconds_per_class, a.reply_timeout, a.seed, a.kill_cycles)
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    r = out["requests"]
    healthy = (out["daemon_alive_at_end"] and r["no_reply"] == 0 and r["extra_reply"] == 0
               and r["bad_reply"] == 0 and out["pred"]["seq_gaps"] == 0
               and out["pred"]["proba_not_summing_to_1"] == 0)
    k = out["kill_9"]
    if k:
        healthy = healthy and k["state_dir_loadable"] == k["resumed_live_map"] == k["cycles"]
    return 0 if healthy else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
