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
from emtl_stream.io.replay import Replayer
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


# --------------------------------------------------------------------------- 13 SIGTERM
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
