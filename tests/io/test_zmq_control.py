"""Control server: every request gets exactly one reply; oversize, bad input, exceptions, CURVE."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import zmq
import zmq.auth

from emtl_stream.errors import CalibrationError
from emtl_stream.io.protocol import Request
from emtl_stream.io.zmq_control import ControlServer
from emtl_stream.io.zmq_pub import CurveConfig

RECV_MS = 5000


def handler(req: Request) -> dict:
    """Echoes the request; some commands misbehave on purpose."""
    if req.cmd == "fit":
        raise CalibrationError("only 3 labelled windows, fewer than min_windows=5")
    if req.cmd == "save":
        return {"bad": float("nan")}
    if req.cmd == "cancel":
        return {"ok": False, "error": "nothing to cancel"}
    if req.cmd == "shutdown":
        return None
    return {"cmd": req.cmd, "fields": req.fields}


@pytest.fixture
def server(ctx):
    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx, max_message_bytes=65536)
    yield srv
    srv.close()


def req_socket(ctx, address, kind=zmq.REQ, curve=None):
    s = ctx.socket(kind)
    s.linger = 0
    if curve:
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = curve
    s.connect(address)
    return s


def ask(server, sock, data, frames=None):
    """Send ``data`` (bytes) and drive the server until the reply arrives."""
    if frames is not None:
        sock.send_multipart(frames)
    else:
        sock.send(data)
    for _ in range(100):
        server.poll_once(50)
        if sock.poll(0, zmq.POLLIN):
            parts = sock.recv_multipart()
            return json.loads(parts[-1])
    raise AssertionError("no reply within 5 s")


def J(obj):
    return json.dumps(obj).encode()


def test_good_request_reaches_the_handler(server, ctx):
    sock = req_socket(ctx, server.address)
    r = ask(server, sock, J({"v": 1, "cmd": "recalibrate", "classes": ["fist"],
                             "seconds_per_class": 2}))
    assert r == {"v": 1, "ok": True, "cmd": "recalibrate",
                 "fields": {"classes": ["fist"], "seconds_per_class": 2.0}}
    # the REQ socket is usable again: exactly one reply came back
    assert ask(server, sock, J({"v": 1, "cmd": "status"}))["ok"] is True


@pytest.mark.parametrize("data,reason", [
    (b"not json", "not valid JSON"),
    (b"\xff\xff", "not UTF-8"),
    (J({"v": 1, "cmd": "explode"}), "unknown command"),
    (J({"v": 1, "cmd": "rollback", "version": "latest"}), "rollback.version must be an integer"),
    (J({"v": 1, "cmd": "status", "extra": 1}), "unknown field"),
    (J({"cmd": "status"}), '"v"'),
    (J([1, 2]), "JSON object"),
    (b"x" * 65537, "65537 bytes exceeds the limit of 65536"),
    (J({"v": 1, "cmd": "status", "pad": "x" * 70000}), "exceeds the limit"),
])
def test_bad_requests_get_ok_false_with_the_reason(server, ctx, data, reason):
    sock = req_socket(ctx, server.address)
    r = ask(server, sock, data)
    assert r["v"] == 1 and r["ok"] is False and reason in r["error"]
    assert ask(server, sock, J({"v": 1, "cmd": "status"}))["ok"] is True


def test_a_refused_command_is_an_error_reply_logged_in_one_line(server, ctx, caplog):
    sock = req_socket(ctx, server.address)
    with caplog.at_level(logging.DEBUG, logger="emtl_stream"):
        r = ask(server, sock, J({"v": 1, "cmd": "fit", "min_windows": 5}))
    assert r == {"v": 1, "ok": False, "error": "only 3 labelled windows, fewer than min_windows=5"}
    rec = [x for x in caplog.records if "fit" in x.getMessage()]
    lines = [x for x in rec if x.levelno >= logging.INFO]
    # one line (at INFO: a client's mistake) naming the reason; the traceback only at DEBUG
    assert len(lines) == 1 and lines[0].exc_info is None and lines[0].levelno == logging.INFO
    assert "fewer than min_windows=5" in lines[0].getMessage()
    assert any(x.levelno == logging.DEBUG and x.exc_info is not None for x in rec)


def test_a_flood_of_refused_requests_is_logged_once_per_interval(server, ctx, caplog):
    from emtl_stream.io.zmq_control import REFUSALS_LOGGED

    server.refusals.interval_s = 3600.0  # the flood lies inside one interval, however slow
    sock = req_socket(ctx, server.address)
    bad = [b"not json", J({"v": 1, "cmd": "fit", "min_windows": 5}), J({"v": 1, "cmd": "x"})]
    with caplog.at_level(logging.DEBUG, logger="emtl_stream"):
        for i in range(300):
            assert ask(server, sock, bad[i % 3])["ok"] is False  # every one still answered
        loud = [x for x in caplog.records if x.levelno >= logging.INFO]
        assert len(loud) == REFUSALS_LOGGED, [x.getMessage() for x in loud]
        assert not [x for x in loud if x.levelno >= logging.WARNING]
        server.refusals.interval_s = 0.0  # the interval is over: the next poll summarises
        server.poll_once(0)
    summary = [x for x in caplog.records if x.levelno == logging.WARNING]
    assert len(summary) == 1, [x.getMessage() for x in summary]
    assert f"{300 - REFUSALS_LOGGED} more control requests refused" in summary[0].getMessage()
    assert ask(server, sock, J({"v": 1, "cmd": "status"}))["ok"] is True


def test_unserialisable_or_error_results_still_get_one_reply(server, ctx):
    sock = req_socket(ctx, server.address)
    r = ask(server, sock, J({"v": 1, "cmd": "save"}))
    assert r["ok"] is False and "internal error" in r["error"]
    assert ask(server, sock, J({"v": 1, "cmd": "cancel"})) == {
        "v": 1, "ok": False, "error": "nothing to cancel"}
    assert ask(server, sock, J({"v": 1, "cmd": "shutdown"})) == {"v": 1, "ok": True}


def test_multi_frame_body_and_dealer_without_delimiter(server, ctx):
    dealer = req_socket(ctx, server.address, zmq.DEALER)
    r = ask(server, dealer, None, frames=[b"", J({"v": 1, "cmd": "status"}), b"more"])
    assert r["ok"] is False and "exactly one frame" in r["error"]
    r = ask(server, dealer, None, frames=[J({"v": 1, "cmd": "status"})])
    assert r["ok"] is True


def test_every_request_gets_exactly_one_reply(server, ctx):
    dealer = req_socket(ctx, server.address, zmq.DEALER)
    bodies = [J({"v": 1, "cmd": "status"}), b"junk", b"x" * 70000, J({"v": 1, "cmd": "fit"}),
              J({"v": 1, "cmd": "nope"})] * 4
    for i, body in enumerate(bodies):
        dealer.send_multipart([b"", body])
    replies = []
    for _ in range(200):
        server.poll_once(20)
        while dealer.poll(0, zmq.POLLIN):
            replies.append(json.loads(dealer.recv_multipart()[-1]))
        if len(replies) >= len(bodies):
            break
    assert [r["ok"] for r in replies] == [True, False, False, False, False] * 4
    server.poll_once(100)
    assert not dealer.poll(100, zmq.POLLIN)
    assert server.n_requests == len(bodies)


HOSTILE = [
    b'{"v":1,"cmd":"recalibrate","repetitions":1000000000000000000000000000000}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e300}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e308,"repetitions":10}',
    b'{"v":1,"cmd":"recalibrate","seconds_per_class":1e309}',
    b'{"v":1.0,"cmd":"status"}',
    b'{"v":1,"cmd":"train","classes":null}',
    b'{"v":1,"cmd":"recalibrate","repetitions":null}',
    b"[" * 986 + b"]" * 986,
    b'{"v":1,"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a":' * 4000,
]


@pytest.mark.parametrize("kind", [zmq.REQ, zmq.DEALER])
def test_hostile_requests_get_exactly_one_ok_false_reply(server, ctx, kind):
    """Absurd numbers, nulls, a float version and deep nesting: one refusal each, in order."""
    sock = req_socket(ctx, server.address, kind)
    for body in HOSTILE:
        if kind == zmq.DEALER:
            r = ask(server, sock, None, frames=[b"", body])
        else:
            r = ask(server, sock, body)
        assert r["v"] == 1 and r["ok"] is False, (body[:60], r)
        assert not sock.poll(50, zmq.POLLIN)  # exactly one reply
    assert server.n_requests == server.n_errors == len(HOSTILE)
    assert ask(server, sock, J({"v": 1, "cmd": "status"}), None if kind == zmq.REQ else
               [b"", J({"v": 1, "cmd": "status"})])["ok"] is True


def test_a_parser_bug_still_gets_one_reply(ctx, monkeypatch):
    """Belt and braces: whatever parse_request raises, the client gets ok:false."""
    from emtl_stream.io import protocol

    def broken(data, max_bytes):
        raise RecursionError("maximum recursion depth exceeded")

    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx)
    try:
        monkeypatch.setattr(protocol, "parse_request", broken)
        sock = req_socket(ctx, srv.address)
        r = ask(srv, sock, J({"v": 1, "cmd": "status"}))
        assert r["ok"] is False and "could not be parsed" in r["error"]
    finally:
        srv.close()


def test_frames_over_the_hard_limit_drop_the_peer_without_hurting_the_server(ctx):
    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx, max_message_bytes=1000,
                        hard_limit_bytes=4000)
    try:
        hostile = req_socket(ctx, srv.address)
        hostile.send(b"x" * 100_000)  # libzmq drops this connection before allocating
        for _ in range(10):
            srv.poll_once(20)
        assert not hostile.poll(100, zmq.POLLIN)
        assert srv.n_requests == 0
        ok = req_socket(ctx, srv.address)
        r = ask(srv, ok, b"y" * 2000)  # between the limits: refused with a reply
        assert r["ok"] is False and "2000 bytes exceeds the limit of 1000" in r["error"]
        assert ask(srv, ok, J({"v": 1, "cmd": "status"}))["ok"] is True
    finally:
        srv.close()


def test_thread_variant_serves_and_stops(ctx):
    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx).start(poll_ms=10)
    try:
        sock = req_socket(ctx, srv.address)
        sock.send(J({"v": 1, "cmd": "status"}))
        assert sock.poll(RECV_MS, zmq.POLLIN)
        assert json.loads(sock.recv())["ok"] is True
        with pytest.raises(RuntimeError, match="own thread"):
            srv.poll_once(0)
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
    finally:
        srv.stop()
    sock.send(J({"v": 1, "cmd": "status"}))
    assert not sock.poll(200, zmq.POLLIN)  # stopped: nobody answers
    assert srv.poll_once(RECV_MS) == 1  # now the caller's loop can serve it
    assert json.loads(sock.recv())["ok"] is True
    srv.close()
    srv.close()
    with pytest.raises(RuntimeError, match="closed"):
        srv.poll_once(0)


def test_bind_policy_and_arguments(ctx):
    with pytest.raises(ValueError, match="not loopback"):
        ControlServer("tcp://*:*", handler, context=ctx)
    with pytest.raises(TypeError, match="handler must be callable"):
        ControlServer("tcp://127.0.0.1:*", None, context=ctx)
    with pytest.raises(ValueError, match="hard_limit_bytes"):
        ControlServer("tcp://127.0.0.1:*", handler, context=ctx, max_message_bytes=5000,
                      hard_limit_bytes=100)


def test_curve_unauthorised_clients_get_nothing(ctx, tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    spub, ssec = zmq.curve_keypair()
    good_key, good_secret = zmq.auth.create_certificates(str(keys), "good")
    shutil.copy(good_key, allowed)
    gpub, gsec = zmq.auth.load_certificate(good_secret)
    bpub, bsec = zmq.curve_keypair()
    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx,
                        curve=CurveConfig(ssec, spub, str(allowed)))
    try:
        bad = req_socket(ctx, srv.address, curve=(spub, bpub, bsec))
        plain = req_socket(ctx, srv.address)
        bad.send(J({"v": 1, "cmd": "status"}))
        plain.send(J({"v": 1, "cmd": "status"}))
        good = req_socket(ctx, srv.address, curve=(spub, gpub, gsec))
        assert ask(srv, good, J({"v": 1, "cmd": "status"}))["ok"] is True
        for _ in range(10):
            srv.poll_once(20)
        assert not bad.poll(100, zmq.POLLIN) and not plain.poll(100, zmq.POLLIN)
        assert srv.n_requests == 1
    finally:
        srv.close()
