"""The ui server without a browser: SSE with a plain HTTP client, the API, bind policy, CLI.

A real daemon with a synthetic armband (tests/daemon/conftest.py) unless a test is
about the daemon being absent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon.conftest import daemon_config, free_port
from lsl_helpers import unique_id
from ui.helpers import SSEReader, http_request

from emtl_stream.config import load_config
from emtl_stream.errors import ConfigError
from emtl_stream.io.client import Client
from emtl_stream.ui.server import MAX_BODY_BYTES, UiServer, check_ui_bind, parse_address

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "emtl_stream" / "ui" / "static"


def dead_addresses():
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def test_events_push_changing_predictions_and_health(live, ui):
    sse = SSEReader(ui.url)
    try:
        state = sse.until(lambda s: (s.get("link") or {}).get("daemon") and s.get("pred")
                          and s.get("status"), 20.0)
        status = live.client.status()
        assert state["status"]["classes"] == status["classes"]
        assert state["status"]["stream"]["channels"] == status["stream"]["channels"] == 8
        seqs, labels = set(), set()
        for cls in ("open", "close"):
            live.player.set_class(cls)
            t_end = time.monotonic() + 1.5
            while time.monotonic() < t_end:
                sse.next_event()
                seqs.add(sse.state["pred"]["seq"])
                labels.add(sse.state["pred"]["label"])
        assert len(seqs) > 10, "predictions did not keep coming"
        assert {"open", "close"} <= labels, labels
        health = sse.state["health"]
        # The daemon publishes one window per step_ms = 50 ms.
        assert 5.0 < health["window_rate_hz"] < 40.0, health
        assert 0.0 <= health["latency_ms"] < 1000.0, health
        act = sse.state["activity"]
        assert act["feature"] == "mav" and len(act["values"]) == 8
    finally:
        sse.close()


def test_api_recalibrate_then_rollback_changes_status_model(live, ui):
    sse = SSEReader(ui.url)
    try:
        sse.until(lambda s: (s.get("link") or {}).get("daemon") and s.get("status"), 20.0)
        v0 = live.client.status()["model"]
        with live.client.subscribe(("event",)) as sub:
            code, _, body = http_request(ui.url, "POST", "/api/recalibrate",
                                         {"classes": live.classes, "seconds_per_class": 0.6})
            reply = json.loads(body)
            assert code == 200 and reply["ok"], reply
            done = wait_event_kind(sub, ("calibration_done", "calibration_failed"), 60.0)
        assert done["kind"] == "calibration_done", done
        v1 = done["model"]
        state = sse.until(lambda s: (s.get("status") or {}).get("model") == v1
                          and any(r["version"] == v1 and r["objective"] is not None
                                  for r in s.get("history", [])), 10.0)
        row = next(r for r in state["history"] if r["version"] == v1)
        assert row["why"] == "prompted" and row["objective"] == pytest.approx(done["objective"])
        assert row["roll"] == done["roll"]

        code, _, body = http_request(ui.url, "POST", "/api/rollback", {})
        reply = json.loads(body)
        assert code == 200 and reply["ok"] and reply["previous"] == v1, reply
        assert live.client.status()["model"] == reply["model"] == v0
        state = sse.until(lambda s: any(r["why"] == "rollback" for r in s["history"]), 10.0)
        assert state["history"][0]["why"] == "rollback" and state["history"][0]["version"] == v0

        # A refusal comes back unchanged, with 200 (the daemon answered).
        code, _, body = http_request(ui.url, "POST", "/api/rollback", {"version": 999})
        reply = json.loads(body)
        assert code == 200 and not reply["ok"] and "999" in reply["error"]
    finally:
        sse.close()


def wait_event_kind(sub, kinds, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = sub.recv(timeout_s=0.5)
        if got and got[0] == "event" and got[1]["kind"] in kinds:
            return got[1]
    pytest.fail(f"no {kinds} event within {timeout_s} s")


@pytest.mark.parametrize("path,body,headers,status,needle", [
    ("/api/recalibrate", b'{"seconds_per_class": 1}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    ("/api/recalibrate", b"{}", {"Origin": "http://evil.example"}, 403, "evil.example"),
    ("/api/recalibrate", b"{not json", {}, 400, "not JSON"),
    ("/api/recalibrate", b'{"seconds_per_class": NaN}', {}, 400, "not JSON"),
    ("/api/recalibrate", b"[1]", {}, 400, "JSON object"),
    ("/api/recalibrate", b'{"sec": 1}', {}, 400, "unknown field"),
    ("/api/recalibrate", b'{"seconds_per_class": 0}', {}, 400, "seconds_per_class"),
    ("/api/recalibrate", b'{"seconds_per_class": 1e9}', {}, 400, "<= 120"),
    ("/api/recalibrate", b'{"seconds_per_class": "1"}', {}, 400, "must be a number"),
    ("/api/recalibrate", b'{"repetitions": true}', {}, 400, "integer"),
    ("/api/recalibrate", b'{"repetitions": 21}', {}, 400, "<= 20"),
    ("/api/recalibrate", b'{"classes": []}', {}, 400, "classes"),
    ("/api/recalibrate", b'{"classes": [1]}', {}, 400, "classes"),
    ("/api/recalibrate", b'{"labels": "no"}', {}, 400, "labels"),
    ("/api/rollback", b'{"version": -1}', {}, 400, "version"),
    ("/api/rollback", b'{"version": 1.5}', {}, 400, "integer"),
    ("/api/cancel", b'{"x": 1}', {}, 400, "unknown field"),
    ("/api/shutdown", b"{}", {}, 404, "no such command"),
])
def test_bad_requests_are_refused_before_the_daemon(start_ui, path, body, headers,
                                                    status, needle):
    ui = start_ui(*dead_addresses())
    code, _, raw = http_request(ui.url, "POST", path, body, headers)
    reply = json.loads(raw)
    assert code == status and reply["ok"] is False and needle in reply["error"], (code, reply)


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/events"),
                                         ("GET", "/api/state"), ("POST", "/api/cancel")])
def test_a_foreign_host_name_is_refused(start_ui, method, path):
    """DNS rebinding: evil.example re-pointed at 127.0.0.1 is not this page's origin."""
    ui = start_ui(*dead_addresses())
    port = ui.port
    code, _, raw = http_request(ui.url, method, path, {} if method == "POST" else None,
                                {"Host": f"evil.example:{port}",
                                 "Origin": f"http://evil.example:{port}"})
    assert code == 403 and "evil.example" in json.loads(raw)["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert http_request(ui.url, "GET", "/api/state", headers={"Host": host})[0] == 200


def test_oversized_body_is_not_read(start_ui):
    ui = start_ui(*dead_addresses())
    code, _, raw = http_request(ui.url, "POST", "/api/recalibrate",
                                b"{" + b" " * MAX_BODY_BYTES + b"}")
    assert code == 413 and str(MAX_BODY_BYTES) in json.loads(raw)["error"]


def test_unreachable_daemon_gets_502_and_the_stream_says_so(start_ui):
    control, pub = dead_addresses()
    ui = start_ui(control, pub)
    code, _, raw = http_request(ui.url, "POST", "/api/cancel", {}, timeout=20.0)
    reply = json.loads(raw)
    assert code == 502 and "not reachable" in reply["error"] and control in reply["error"]
    sse = SSEReader(ui.url)
    try:
        state = sse.until(lambda s: "no reply" in ((s.get("link") or {}).get("error") or ""),
                          10.0)
        assert state["link"]["daemon"] is False and control in state["link"]["error"]
    finally:
        sse.close()


def test_daemon_started_after_the_ui_is_picked_up(tmp_path, source, start_player, start_daemon,
                                                  start_ui):


    control, pub = dead_addresses()
    ui = start_ui(control, pub)
    sse = SSEReader(ui.url)
    try:
        sse.until(lambda s: "no reply" in ((s.get("link") or {}).get("error") or ""), 10.0)
        sid = unique_id("ui")
        start_player(sid, follow_prompts=pub)
        start_daemon(daemon_config(tmp_path / "state", sid, pub=pub, control=control),
                     bundle=source[0])
        state = sse.until(lambda s: s["link"]["daemon"] and s.get("pred"), 30.0)
        assert state["link"]["error"] is None
        assert any(a["kind"] == "daemon_back" for a in state["alerts"]), state["alerts"]
    finally:
        sse.close()


def test_static_assets_are_served_and_need_no_network(start_ui):
    ui = start_ui(*dead_addresses())
    code, headers, page = http_request(ui.url, "GET", "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    referenced = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert set(referenced) == {"/static/style.css", "/static/app.js"}
    for name in sorted(p.name for p in STATIC.iterdir()):
        code, headers, body = http_request(ui.url, "GET", f"/static/{name}")
        assert code == 200 and body == (STATIC / name).read_bytes()
        # No CDN, no web font, no remote anything: the page works with no internet.
        assert not re.search(rb"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body), name
    for bad in ("/static/../server.py", "/static/%2e%2e/server.py", "/nope", "/static/"):
        assert http_request(ui.url, "GET", bad)[0] == 404, bad
    toml = (REPO / "pyproject.toml").read_text()
    assert '"ui/static/*"' in toml, "the page's assets must be package data"


def test_bind_policy_and_config():
    assert parse_address("127.0.0.1:5558") == ("127.0.0.1", 5558)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("5558", "host:", ":80", "127.0.0.1:70000", "127.0.0.1:x"):
        with pytest.raises(ConfigError, match="ui.address"):
            parse_address(bad)
    for remote in ("0.0.0.0:5558", "192.168.1.10:5558", "[::]:5558"):
        with pytest.raises(ConfigError, match="not loopback"):
            check_ui_bind(remote, allow_remote=False)
        assert check_ui_bind(remote, allow_remote=True)[1] == 5558
    assert check_ui_bind("localhost:1", allow_remote=False) == ("localhost", 1)
    with pytest.raises(ConfigError, match="not loopback"):
        UiServer("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "0.0.0.0:0")
    cfg = load_config(None, env={})
    assert cfg.ui.address == "127.0.0.1:5558" and cfg.ui.allow_remote is False
    assert load_config(None, env={"EMTL_UI_ADDRESS": "127.0.0.1:6000"}).ui.address == \
        "127.0.0.1:6000"
    with pytest.raises(ConfigError, match="ui.address"):
        load_config(None, env={"EMTL_UI_ADDRESS": "nonsense"})


def test_cli_ui_serves_until_sigterm():
    control, pub = dead_addresses()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emtl_stream", "ui", "--address", "127.0.0.1:0",
         "--control", control, "--pub", pub],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        assert m, line + proc.stderr.read()
        code, _, body = http_request(m.group(1), "GET", "/")
        assert code == 200 and b"Recalibrate" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_ui_refuses_a_remote_address_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "emtl_stream", "ui", "--address", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not loopback" in proc.stderr


def test_status_reply_feeds_the_page_not_a_copy(live, ui):
    """Every status field the page shows is the daemon's own reply, unchanged."""
    sse = SSEReader(ui.url)
    try:
        state = sse.until(lambda s: s.get("status") and s["status"].get("windows", 0) > 0, 20.0)
        direct = Client(live.control, live.pub).status()
        for key in ("classes", "model", "maps", "state"):
            assert state["status"][key] == direct[key], key
    finally:
        sse.close()


def test_browser_tests_fail_loudly_without_chromium(tmp_path):
    """A missing browser is a failure with the install command, never a skip."""
    env = dict(os.environ, EMTL_CHROMIUM=str(tmp_path / "no-chromium"))
    test = "test_browser.py::test_ui_server_restart_is_survived_by_the_page"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(REPO / "tests" / "ui" / test)],
        capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "apt-get install -y chromium" in out and "1 error" in out, out
    assert "skipped" not in out, out
