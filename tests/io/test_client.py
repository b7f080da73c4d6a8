"""Client: requests against a real control server, lazy-pirate reset, subscriptions, CURVE."""

from __future__ import annotations

import shutil
import threading

import pytest
import zmq
import zmq.auth

import emtl_stream
from emtl_stream.config import Config
from emtl_stream.errors import ProtocolError
from emtl_stream.io import protocol as P
from emtl_stream.io.client import Client, CurveClient
from emtl_stream.io.zmq_control import ControlServer
from emtl_stream.io.zmq_pub import CurveConfig, Publisher


def echo(req):
    return {"cmd": req.cmd, "fields": req.fields}


@pytest.fixture
def server(ctx):
    srv = ControlServer("tcp://127.0.0.1:*", echo, context=ctx).start(poll_ms=10)
    yield srv
    srv.close()


def test_public_name():
    assert emtl_stream.Client is Client


def test_command_methods_send_only_given_fields(server, ctx):
    with Client(control=server.address, timeout_s=5.0, context=ctx) as c:
        assert c.status() == {"v": 1, "ok": True, "cmd": "status", "fields": {}}
        assert c.recalibrate()["fields"] == {}
        assert c.recalibrate(classes=("fist", "rest"), seconds_per_class=0.5,
                             repetitions=2)["fields"] == {
            "classes": ["fist", "rest"], "seconds_per_class": 0.5, "repetitions": 2}
        assert c.label("fist")["fields"] == {"label": "fist"}
        assert c.label(None)["fields"] == {"label": None}
        assert c.fit()["fields"] == {} and c.fit(min_windows=4)["fields"] == {"min_windows": 4}
        assert c.rollback()["fields"] == {} and c.rollback(3)["fields"] == {"version": 3}
        for name in ("cancel", "save", "shutdown"):
            assert getattr(c, name)()["cmd"] == name
        # error replies are returned, not raised
        r = c.request("fly")
        assert r["ok"] is False and "unknown command" in r["error"]


def test_timeout_names_the_address_and_the_socket_is_reset(ctx):
    router = ctx.socket(zmq.ROUTER)  # bound but not answering yet
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    c = Client(control=address, timeout_s=0.3, context=ctx)
    with pytest.raises(TimeoutError, match=address.replace(".", r"\.")):
        c.status()
    assert c.n_resets == 1

    # Now answer everything queued on the router (the stale request too, whose peer
    # socket is gone). A REQ socket that was not reset would raise "Operation cannot
    # be accomplished in current state" on the next send instead of getting a reply.
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            if router.poll(20, zmq.POLLIN):
                *envelope, body = router.recv_multipart()
                req = P.parse_request(body)
                router.send_multipart([*envelope, P.reply_ok(echo=req.cmd)])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        c.timeout_s = 5.0
        assert c.rollback(2) == {"v": 1, "ok": True, "echo": "rollback"}
        assert c.n_resets == 1
    finally:
        stop.set()
        thread.join()
        router.close(linger=0)


def test_timeout_when_nothing_listens(ctx):
    c = Client(control="tcp://127.0.0.1:1", timeout_s=0.2, context=ctx)
    with pytest.raises(TimeoutError, match="tcp://127.0.0.1:1"):
        c.request("status")
    with pytest.raises(TimeoutError):
        c.request("status")  # again: no EFSM, a fresh socket each time
    assert c.n_resets == 2


def test_oversized_and_unencodable_requests_are_refused_locally(ctx):
    c = Client(control="tcp://127.0.0.1:1", timeout_s=0.2, context=ctx)
    with pytest.raises(ProtocolError, match="over the limit"):
        c.request("status", pad="x" * 70000)
    with pytest.raises(ProtocolError, match="NaN"):
        c.request("recalibrate", seconds_per_class=float("nan"))
    with pytest.raises(ValueError, match="timeout_s"):
        Client(timeout_s=0)


def _sync(pub, sub):
    for _ in range(100):
        pub.publish("event", P.event_msg("stream_restored", t_pub=0.0))
        msg = sub.recv(timeout_s=0.05)
        if msg is not None:
            while sub.recv(timeout_s=0.1) is not None:
                pass
            return
    raise AssertionError("subscription never reached the publisher")


def test_subscribe_iterates_and_times_out(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        c = Client(pub=pub.address, timeout_s=0.3, context=ctx)
        with c.subscribe(["event", "prompt"]) as sub:
            _sync(pub, sub)
            pub.publish("prompt", P.prompt_msg(cls="fist", remaining_s=1.0, step=1, of=3))
            pub.publish("pred", {"v": 1, "seq": 1})  # not subscribed
            pub.publish("event", P.event_msg("calibration_failed", t_pub=1.0, reason="why"))
            it = iter(sub)
            assert next(it) == ("prompt", {"v": 1, "class": "fist", "remaining_s": 1.0,
                                           "step": 1, "of": 3})
            topic, obj = next(it)
            assert topic == "event" and obj["reason"] == "why"
            with pytest.raises(TimeoutError, match="no message from"):
                next(it)
            assert sub.recv(timeout_s=0.05) is None
        with pytest.raises(RuntimeError, match="closed"):
            sub.recv()


def test_subscribe_conflate_gives_the_newest_prediction(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        c = Client(pub=pub.address, timeout_s=2.0, context=ctx)
        with c.subscribe("pred", conflate=True) as sub:
            for _ in range(100):
                pub.publish("pred", {"v": 1, "seq": 0})
                if sub.recv(timeout_s=0.05) is not None:
                    break
            for seq in range(1, 31):
                pub.publish("pred", {"v": 1, "seq": seq})
            last = None
            for _ in range(31):
                last = sub.recv()[1]["seq"]
                if last == 30:
                    break
            assert last == 30
            assert sub.recv(timeout_s=0.2) is None


def test_malformed_published_frames_are_skipped(ctx):
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.bind("tcp://127.0.0.1:*")
    address = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    c = Client(pub=address, timeout_s=2.0, context=ctx)
    with c.subscribe(None) as sub:
        for _ in range(100):
            pub.send(b"event {}")
            if sub.recv(timeout_s=0.05) is not None:
                break
        while sub.recv(timeout_s=0.1) is not None:
            pass
        pub.send(b"pred {broken")
        pub.send(b'pred {"v": 1, "seq": 2}')
        assert sub.recv() == ("pred", {"v": 1, "seq": 2})
    pub.close(linger=0)


def test_curve_client_from_config_talks_to_a_curve_server(ctx, tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    server_key, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_key, client_secret = zmq.auth.create_certificates(str(keys), "client")
    shutil.copy(client_key, allowed)
    cfg = Config().replace(zmq={
        "curve_server_secret": server_secret, "curve_server_public": server_key,
        "curve_authorized_clients_dir": str(allowed),
        "curve_client_public": client_key, "curve_client_secret": client_secret})
    srv = ControlServer("tcp://127.0.0.1:*", echo, context=ctx,
                        curve=CurveConfig.from_config(cfg.zmq)).start(poll_ms=10)
    try:
        good = Client(control=srv.address, timeout_s=5.0, context=ctx,
                      curve=CurveClient.from_config(cfg.zmq))
        assert good.status()["ok"] is True
        # same server key, but an ephemeral client key that is not authorised
        stranger = Client(control=srv.address, timeout_s=0.4, context=ctx,
                          curve=CurveClient(server_key))
        with pytest.raises(TimeoutError):
            stranger.status()
        assert CurveClient.from_config(Config().zmq) is None
        assert CurveConfig.from_config(Config().zmq) is None
    finally:
        srv.close()


def test_train_sends_the_train_command_with_only_given_fields(server, ctx):
    with Client(control=server.address, timeout_s=5.0, context=ctx) as c:
        assert c.train() == {"v": 1, "ok": True, "cmd": "train", "fields": {}}
        assert c.train(classes=("rest", "fist"), seconds_per_class=2.0, repetitions=1)[
            "fields"] == {"classes": ["rest", "fist"], "seconds_per_class": 2.0,
                          "repetitions": 1}
        # the server validates the fields exactly as for recalibrate
        bad = c.train(seconds_per_class=-1.0)
        assert bad["ok"] is False and "seconds_per_class" in bad["error"]


def test_a_refused_request_logs_one_line_without_a_traceback(ctx):
    import logging

    from emtl_stream.errors import CalibrationError
    from emtl_stream.logs import logger

    def handler(req):
        if req.cmd == "rollback":
            raise CalibrationError("no map before version 1 to roll back to")
        raise RuntimeError("a bug")

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.DEBUG)
    logger.addHandler(keep)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    srv = ControlServer("tcp://127.0.0.1:*", handler, context=ctx).start(poll_ms=10)
    try:
        with Client(control=srv.address, timeout_s=5.0, context=ctx) as c:
            r = c.rollback()
            assert r["ok"] is False and "no map before version 1" in r["error"]
            # a client's mistake: one line at INFO (rate limited), no traceback
            refused = [rec for rec in records if rec.levelno >= logging.INFO
                       and "refused" in rec.getMessage()]
            assert len(refused) == 1 and refused[0].exc_info is None
            assert refused[0].levelno == logging.INFO
            assert "no map before version 1" in refused[0].getMessage()
            records.clear()
            assert c.status()["ok"] is False  # an unexpected failure keeps its traceback
            failed = [rec for rec in records if rec.levelno >= logging.WARNING]
            assert len(failed) == 1 and failed[0].exc_info is not None
    finally:
        srv.close()
        logger.removeHandler(keep)
        logger.setLevel(old_level)
