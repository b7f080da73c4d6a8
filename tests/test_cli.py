"""``emtl-stream`` / ``python -m emtl_stream`` as a user runs it: subprocesses, exit codes,
one-line errors, client commands against a real running daemon, ``train``, ``replay``,
``run`` with a bad config and ``run`` stopped by SIGTERM.

The daemon for the client commands runs in this process (thread) with a synthetic
armband replayer; the CLI runs as a subprocess and talks to it over loopback ZeroMQ.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from daemon.conftest import armband, daemon_config, free_port, make_source, unique_id

from emtl_stream.daemon.bundle import SourceBundle
from emtl_stream.daemon.service import Daemon
from emtl_stream.io.client import Client
from emtl_stream.io.recordings import load_recording
from emtl_stream.sim.replay import Replayer
from emtl_stream.model.classify import MappedClassifier
from emtl_stream.pipeline.offline import featurize

CLI = [sys.executable, "-m", "emtl_stream"]


def cli(*args, timeout: float = 60.0, check_traceback: bool = True):
    """Run the CLI; returns the CompletedProcess (text)."""
    proc = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout)
    if check_traceback:
        assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_line(stderr: str) -> str:
    """The stderr of a failing command: exactly one non-empty line (LSL log lines aside)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and ln.startswith("emtl-stream")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def source():
    return make_source()


@pytest.fixture
def running(tmp_path, source):
    """A daemon (in this process) serving a prompt-following synthetic armband."""
    sid = unique_id("cli")
    config = daemon_config(tmp_path / "state", sid)
    player = Replayer(armband(), name="emtl-cli-test", source_id=sid,
                      follow_prompts=config.zmq.pub).start()
    daemon = Daemon(config, bundle=source[0]).start()
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    with client.subscribe(("pred",)) as sub:
        assert sub.recv(timeout_s=20.0) is not None, "no prediction from the test daemon"
    yield config, player, client
    client.close()
    daemon.stop()
    player.stop()


def _addr(config):
    return ["--control", config.zmq.control, "--pub", config.zmq.pub]


# --------------------------------------------------------------------------- usage
def test_help_and_usage_errors():
    proc = cli("--help")
    assert proc.returncode == 0 and "recalibrate" in proc.stdout
    proc = cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = cli("rollback", "not-a-number")
    assert proc.returncode == 2
    proc = cli("subscribe", "pred", "--count", "-1")
    assert proc.returncode == 2 and ">= 0" in proc.stderr
    proc = cli("status", "--control", "notanaddress")
    assert proc.returncode == 2 and "not a ZeroMQ endpoint" in one_line(proc.stderr)
    for bad in ("nan", "-0.1", "5.5", "soon"):
        proc = cli("evaluate", "no-such-dir", "--lead-in", bad)
        assert proc.returncode == 2 and "expected seconds in [0, 5]" in proc.stderr, bad
    proc = cli("evaluate", "no-such-dir", "--lead-in", "0.5", "--unlabelled")
    assert proc.returncode == 2 and "--lead-in applies to" in one_line(proc.stderr)
    proc = cli("recalibrate", "--classes", " , ")
    assert proc.returncode == 2 and "--classes needs" in one_line(proc.stderr)
    for huge in ("99999999999999999999999", "2147483648", "9" * 5000):
        proc = cli("rollback", huge)  # a usage error naming the documented bound
        assert proc.returncode == 2, (huge[:30], proc.returncode, proc.stderr[-300:])
        assert "map versions are at most 2147483647" in proc.stderr
        assert "set_int_max_str_digits" not in proc.stderr and len(proc.stderr) < 600


def test_status_without_a_daemon_fails_in_one_line():
    ports = ["--control", f"tcp://127.0.0.1:{free_port()}",
             "--pub", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5"]
    proc = cli("status", *ports)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert "no reply" in line and "status" in line


def test_run_with_an_unknown_config_key_exits_2_naming_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[stream]\nname = \"x\"\nwobble = 3\n")
    proc = cli("run", "--config", bad)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "stream.wobble" in line and str(bad) in line


# --------------------------------------------------------------------------- client commands
def test_status_rollback_subscribe_recalibrate_against_a_running_daemon(running):
    config, player, client = running
    proc = cli("status", *_addr(config))
    assert proc.returncode == 0, proc.stderr
    assert "state streaming" in proc.stdout and "model 1" in proc.stdout
    assert "connected" in proc.stdout and "NOT" not in proc.stdout
    proc = cli("status", "--json", *_addr(config))
    assert proc.returncode == 0 and json.loads(proc.stdout)["classes"] == client.status()["classes"]

    proc = cli("subscribe", "pred", "--count", "3", *_addr(config))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    seqs = []
    for ln in lines:
        topic, body = ln.split(" ", 1)
        msg = json.loads(body)
        assert topic == "pred" and msg["model"] == 1
        seqs.append(msg["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + 3))

    player.set_shift(1.0)
    proc = cli("recalibrate", "--classes", "rest,open", "--seconds", "0.6", *_addr(config))
    assert proc.returncode == 0, proc.stderr
    assert "new map live: version 2" in proc.stderr
    assert re.search(r"\[ ?\d/3\] open", proc.stderr)  # the prompts were shown
    assert client.status()["model"] == 2

    proc = cli("rollback", "1", *_addr(config))
    assert proc.returncode == 0, proc.stderr
    assert "map 1 live (was 2)" in proc.stdout
    assert client.status()["model"] == 1
    proc = cli("rollback", "7", *_addr(config))
    assert proc.returncode == 1
    assert "no map version 7" in one_line(proc.stderr)
    proc = cli("recalibrate", "--classes", "rest,juggle", *_addr(config))
    assert proc.returncode == 1 and "juggle" in one_line(proc.stderr)


def test_recalibrate_ramp_and_subscribe_show_the_ramp_session(running):
    config, player, client = running
    # every prompt until 3 s of silence after the session (then it exits 1 by design)
    watcher = subprocess.Popen(CLI + ["subscribe", "prompt", "--timeout", "3", *_addr(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = cli("recalibrate", "--ramp", "--seconds", "0.6", *_addr(config))
    assert proc.returncode == 0, proc.stderr
    assert "ramp session" in proc.stderr and "speed calibration live (map 1 kept)" in proc.stderr
    out, _ = watcher.communicate(timeout=30)
    msgs = [json.loads(ln.split(" ", 1)[1]) for ln in out.strip().splitlines()]
    ramps = [m for m in msgs if m.get("ramp")]  # subscribe prints the new fields as they come
    assert ramps and all("ramp" in m["instruction"].lower() for m in ramps), msgs[:3]
    assert all(m["class"] != "rest" for m in ramps)
    assert client.status()["model"] == 1  # the map was kept
    proc = cli("recalibrate", "--ramp", "--no-labels", *_addr(config))
    assert proc.returncode == 2 and "cannot be combined" in one_line(proc.stderr)
    proc = cli("recalibrate", "--ramp", "--classes", "rest", *_addr(config))
    assert proc.returncode == 1 and "resting class" in one_line(proc.stderr)


# --------------------------------------------------------------------------- train, replay
def test_train_writes_a_model_that_loads_and_classifies(tmp_path, emg_dir):
    path = emg_dir / "ciil_es_s01_baseline.npz"
    out = tmp_path / "model.npz"
    proc = cli("train", path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    printed = float(re.search(r"training accuracy ([0-9.]+)", proc.stdout).group(1))
    bundle = SourceBundle.load(out)
    assert (bundle.n_channels, bundle.fs) == (8, 200.0) and len(bundle.classes) == 5
    # independent check: featurise the recording ourselves, classify with the loaded model
    rec = load_recording(path)
    ext = bundle.make_extractor()
    X, seg_index, offset = featurize(rec.emg, rec.fs, ext, bundle.window_ms, bundle.step_ms,
                                     rec.seg_start, rec.seg_len)
    win = int(round(bundle.window_ms * rec.fs / 1000))
    last = np.asarray(rec.seg_start)[seg_index] + offset + win - 1
    y = np.asarray(rec.class_names)[rec.labels[last]]
    m = X.shape[1]
    clf = MappedClassifier(bundle.components, np.eye(m), np.zeros(m))
    pred = np.asarray(bundle.classes)[clf.predict_index(X)]
    acc = float(np.mean(pred == y))
    assert acc == pytest.approx(printed, abs=1e-3)
    assert acc > 0.8  # a within-session fit on a clean baseline recording


def test_replay_a_file_and_synthetic_for_one_second(emg_dir):
    proc = cli("replay", emg_dir / "ciil_es_s02_baseline.npz", "--seconds", "1",
               "--name", unique_id("cli-replay"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = cli("replay", "--synthetic", "--seconds", "1", "--fs", "500",
               "--name", unique_id("cli-synth"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    proc = cli("replay", emg_dir / "ciil_es_s02_baseline.npz", "--synthetic")
    assert proc.returncode == 2


# --------------------------------------------------------------------------- run, SIGTERM
def test_run_stops_cleanly_on_sigterm(tmp_path, source):
    sid = unique_id("sigterm")
    model = source[0].save(tmp_path / "model.npz")
    pub, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "daemon.toml"
    cfg.write_text(
        f'[stream]\nsource_id = "{sid}"\nname = ""\n'
        f'[model]\npath = "{model}"\n'
        f'[zmq]\npub = "{pub}"\ncontrol = "{control}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n')
    player = Replayer(armband(), name="emtl-sigterm", source_id=sid).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    proc = subprocess.Popen(CLI + ["run", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = Client(control, pub, timeout_s=1.0)
    try:
        status = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = client.status()
            except TimeoutError:
                continue
            if status["stream"]["connected"]:
                break
            time.sleep(0.2)
        assert status is not None and status["stream"]["connected"], status
        assert status["model"] == 1 and status["state"] == "streaming"
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"emtl-stream run did not stop within 15 s of SIGTERM: {err[-2000:]}")
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        player.stop()
    # it left a consistent state dir behind
    assert (tmp_path / "state" / "source" / "model.npz").exists()


# --------------------------------------------------------------------------- flags, exit codes
def only_line(stderr: str) -> str:
    """The whole stderr of a failing command is exactly one line (nothing said twice)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _no_daemon():
    return ["--control", f"tcp://127.0.0.1:{free_port()}",
            "--pub", f"tcp://127.0.0.1:{free_port()}"]


def test_global_flags_are_accepted_after_the_subcommand(tmp_path):
    proc = cli("status", *_no_daemon(), "--timeout", "0.3", "--verbose", check_traceback=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # --verbose took effect
    cfg = tmp_path / "c.toml"
    cfg.write_text("[zmq]\nwobble = 1\n")
    proc = cli("status", "--config", cfg)
    assert proc.returncode == 2 and "zmq.wobble" in only_line(proc.stderr)
    proc = cli("--config", cfg, "status")
    assert proc.returncode == 2 and "zmq.wobble" in only_line(proc.stderr)


@pytest.mark.parametrize("args, words", [
    (["evaluate", ".", "--subjects", "x"], ["--subjects", "integers"]),
    (["train", "README.md", "--out", "m.npz", "--covariance-type", "bogus"], ["bogus"]),
    (["replay", "README.md"], ["README.md"]),
    (["rollback", "0"], ["start at 1"]),
    (["train", "--out", "m.npz"], ["--live"]),
])
def test_usage_errors_exit_2_with_one_line(args, words):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stderr
    text = proc.stderr if args[0] in ("evaluate", "rollback") or "bogus" in args else \
        only_line(proc.stderr)
    for w in words:
        assert w in text, proc.stderr


def test_replay_refuses_a_fractional_shift_or_prompts_for_a_file(emg_dir):
    f = emg_dir / "ciil_es_s02_baseline.npz"
    proc = cli("replay", f, "--shift", "0.5", "--name", unique_id("frac"))
    assert proc.returncode == 2 and "fractional" in only_line(proc.stderr)
    proc = cli("replay", f, "--follow-prompts", "tcp://127.0.0.1:5999", "--name", unique_id("fp"))
    assert proc.returncode == 2 and "--follow-prompts needs --synthetic" in only_line(proc.stderr)


def test_a_non_loopback_bind_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    env.update(EMTL_ZMQ_PUB="tcp://0.0.0.0:45991", EMTL_STATE_DIR=str(tmp_path / "s"),
               EMTL_STREAM_NAME=unique_id("nobody"))
    proc = subprocess.run(CLI + ["run"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "0.0.0.0" in only_line(proc.stderr)


def test_a_misspelt_environment_section_exits_2_naming_the_closest():
    env = dict(os.environ, EMTL_TRANSFR_REG="1")
    proc = subprocess.run(CLI + ["status", *_no_daemon()], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2
    assert "EMTL_TRANSFR_REG" in only_line(proc.stderr) and "EMTL_TRANSFER_REG" in proc.stderr


def test_subscribe_without_a_daemon_gives_up_after_the_timeout():
    t0 = time.monotonic()
    proc = cli("subscribe", "pred", "--count", "1", "--timeout", "0.5", *_no_daemon())
    assert proc.returncode == 1 and "no reply" in only_line(proc.stderr)
    assert time.monotonic() - t0 < 30  # not forever (the interpreter start is most of it)


def test_demo_plot_without_matplotlib_fails_before_running():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from emtl_stream.cli import main\n"
            "sys.exit(main(['demo', '--plot', 'never.png']))\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "matplotlib" in only_line(proc.stderr)
    assert "warming up" not in proc.stdout + proc.stderr
    assert time.monotonic() - t0 < 30


def test_liblsl_log_is_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LSLAPICFG"}
    args = CLI + ["replay", "--synthetic", "--seconds", "0.3", "--name", unique_id("quiet")]
    quiet = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env,
                           cwd=tmp_path)
    loud = subprocess.run(args + ["--verbose"], capture_output=True, text=True, timeout=60,
                          env=env, cwd=tmp_path)
    assert quiet.returncode == 0 and loud.returncode == 0
    assert "Loaded default config" in loud.stderr  # liblsl's own INFO line
    assert "Loaded default config" not in quiet.stderr and "loguru" not in quiet.stderr


# --------------------------------------------------------------------------- progress
class _Stream:
    def __init__(self, tty):
        self.text, self.tty = [], tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def _prompts(steps=9, per_step=800):
    for step in range(1, steps + 1):
        for k in range(per_step):
            yield {"class": "rest" if step % 2 == 0 else f"c{step}", "step": step, "of": steps,
                   "remaining_s": 1.0 - k / per_step}


def test_progress_prints_one_plain_line_per_prompt_when_not_a_terminal():
    from emtl_stream.commands import _Progress

    out = _Stream(tty=False)
    p = _Progress(out)
    for msg in _prompts():
        p.prompt(msg)
    p.end()
    lines = "".join(out.text).splitlines()
    assert len(lines) == 9 and "\r" not in "".join(out.text)
    assert lines[0].startswith("[ 1/9] c1") and lines[1].startswith("[ 2/9] rest")


def test_progress_on_a_terminal_redraws_at_most_ten_times_a_second():
    from emtl_stream.commands import _Progress

    out = _Stream(tty=True)
    p = _Progress(out)
    t0 = time.monotonic()
    for msg in _prompts():
        p.prompt(msg)
    elapsed = time.monotonic() - t0
    p.end()
    redraws = "".join(out.text).count("\r")
    assert 9 <= redraws <= 9 + 10 * elapsed + 1, (redraws, elapsed)


# --------------------------------------------------------------------------- lock, run messages
def test_a_second_daemon_on_the_same_state_dir_exits_2_naming_the_first_pid(tmp_path):
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom emtl_stream.io.lock import StateDirLock\n"
         f"lock = StateDirLock({str(state)!r}).acquire()\nprint('locked', flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
        env.update(EMTL_STATE_DIR=str(state), EMTL_STREAM_NAME=unique_id("nobody"))
        proc = subprocess.run(CLI + ["run"], capture_output=True, text=True, timeout=60,
                              env=env)
        assert proc.returncode == 2, proc.stderr
        line = only_line(proc.stderr)
        assert f"pid {holder.pid}" in line and str(state) in line
    finally:
        holder.kill()
        holder.wait()
    from emtl_stream.io.lock import StateDirLock

    with StateDirLock(state) as lock:  # released by the kernel when the holder died
        assert lock.held and (state / "daemon.lock").read_text().strip() == str(os.getpid())


def test_run_says_what_it_is_doing_and_status_says_why_not_connected(tmp_path):
    name = unique_id("absent")
    pub, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
    env.update(EMTL_STATE_DIR=str(tmp_path / "state"), EMTL_STREAM_NAME=name,
               EMTL_ZMQ_PUB=pub, EMTL_ZMQ_CONTROL=control)
    proc = subprocess.Popen(CLI + ["run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "waiting for stream" in line:
                break
        text = "".join(seen)
        assert "no model:" in text and "train --live" in text, text
        assert f"serving on {pub}" in text and control in text, text
        assert f"waiting for stream name {name!r}" in text, text
        st = cli("status", "--control", control, "--pub", pub)
        assert st.returncode == 0 and "NOT connected:" in st.stdout, st.stdout
        down = cli("shutdown", "--control", control, "--pub", pub)
        assert down.returncode == 0 and "stopping" in down.stdout
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --------------------------------------------------------------------------- control verbs
def test_label_fit_cancel_save_and_rollback_verbs(running):
    config, player, client = running
    addr = _addr(config)
    proc = cli("rollback", *addr)  # only the model's identity map exists
    assert proc.returncode == 1 and "first map" in one_line(proc.stderr)
    assert "None" not in proc.stderr
    proc = cli("cancel", *addr)
    assert proc.returncode == 0 and "nothing to cancel" in proc.stdout
    player.set_shift(1.0)
    for cls in ("rest", "open"):
        player.set_class(cls)
        proc = cli("label", cls, *addr)
        assert proc.returncode == 0 and f"labelling windows as {cls}" in proc.stdout
        time.sleep(1.0)
    proc = cli("label", "none", *addr)
    assert proc.returncode == 0 and "labelling stopped" in proc.stdout
    proc = cli("fit", *addr)
    assert proc.returncode == 0, proc.stderr
    assert "new map live: version 2" in proc.stderr
    assert client.status()["model"] == 2
    proc = cli("save", *addr)
    assert proc.returncode == 0 and "saved: map 2 live" in proc.stdout
    assert str(config.state.dir) in proc.stdout
    proc = cli("rollback", *addr)
    assert proc.returncode == 0 and "map 1 live (was 2)" in proc.stdout
    proc = cli("label", "juggle", *addr)
    assert proc.returncode == 1 and "juggle" in one_line(proc.stderr)
    proc = cli("shutdown", *addr)
    assert proc.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.status()
        except TimeoutError:
            break
    else:
        pytest.fail("the daemon still answers after shutdown")


def test_train_live_installs_a_model_and_writes_a_copy(tmp_path):
    sid = unique_id("trainlive")
    config = daemon_config(tmp_path / "state", sid)
    player = Replayer(armband(), name="emtl-train-live", source_id=sid,
                      follow_prompts=config.zmq.pub).start()
    daemon = Daemon(config).start()  # no model: waits for a training session
    try:
        out = tmp_path / "model.npz"
        proc = cli("train", "--live", "--classes", "rest,open,close", "--seconds", "1.5",
                   "--out", out, *_addr(config), timeout=180)
        assert proc.returncode == 0, proc.stderr
        assert "model trained: classes" in proc.stdout and "map version" in proc.stdout
        assert re.search(r"\[ ?\d/\d\] open", proc.stderr)
        bundle = SourceBundle.load(out)
        assert sorted(bundle.classes) == ["close", "open", "rest"] and bundle.fs == 500.0
        status = Client(config.zmq.control, config.zmq.pub).status()
        assert status["state"] == "streaming" and sorted(status["classes"]) == sorted(
            bundle.classes)
    finally:
        daemon.stop()
        player.stop()


def test_a_model_at_another_rate_is_refused_with_the_reason(tmp_path, source):
    sid = unique_id("rate")
    config = daemon_config(tmp_path / "state", sid)
    player = Replayer(armband(fs=1000.0), name="emtl-rate", source_id=sid).start()
    daemon = Daemon(config, bundle=source[0]).start()  # the model is at 500 Hz
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            proc = cli("status", *_addr(config))
            if "expects 500 Hz" in proc.stdout:
                break
            time.sleep(0.5)
        assert "NOT connected" in proc.stdout and "runs at 1000 Hz" in proc.stdout, proc.stdout
        proc = cli("recalibrate", *_addr(config))
        assert proc.returncode == 1
        line = one_line(proc.stderr)
        assert "no EMG stream connected" in line and "expects 500 Hz" in line, line
    finally:
        daemon.stop()
        player.stop()


def test_a_port_in_use_is_reported_once(tmp_path):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMTL_")}
        env.update(EMTL_ZMQ_PUB=f"tcp://127.0.0.1:{port}", EMTL_STATE_DIR=str(tmp_path / "s"),
                   EMTL_ZMQ_CONTROL=f"tcp://127.0.0.1:{free_port()}",
                   EMTL_STREAM_NAME=unique_id("nobody"))
        proc = subprocess.run(CLI + ["run"], capture_output=True, text=True, timeout=120,
                              env=env)
    finally:
        sock.close(linger=0)
    assert proc.returncode == 1, proc.stderr
    failures = [ln for ln in proc.stderr.splitlines() if str(port) in ln and "serving" not in ln]
    assert len(failures) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


BLAS_PROBE = """
import json
from emtl_stream.daemon import blas
print(blas.set_blas_environment())
import numpy  # noqa: F401  (loads OpenBLAS with the thread count now in the environment)
from threadpoolctl import threadpool_info
print(json.dumps(sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})))
"""


@pytest.mark.parametrize("preset,expect_set", [(None, True), ("2", False)])
def test_daemon_commands_run_blas_on_one_thread_unless_told(preset, expect_set):
    from emtl_stream import cli

    from emtl_stream.daemon.blas import USER_THREAD_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in USER_THREAD_VARIABLES}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("\n")
    assert out[0] == str(expect_set)
    threads = json.loads(out[1])
    assert threads == ([1] if expect_set else [int(preset)])
    assert set(cli.DAEMON_COMMANDS) <= set(cli._COMMANDS)
