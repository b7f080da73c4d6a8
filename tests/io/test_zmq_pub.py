"""Publisher: real PUB/SUB on loopback, one frame per message, CONFLATE, bind policy, CURVE."""

from __future__ import annotations

import threading

import pytest
import zmq
import zmq.auth

from emtl_stream.errors import ProtocolError
from emtl_stream.io import protocol as P
from emtl_stream.io.zmq_pub import CurveConfig, Publisher, is_local_address

RECV_MS = 5000


def sub_socket(ctx, address, prefix=b"", conflate=False, curve=None):
    s = ctx.socket(zmq.SUB)
    s.linger = 0
    if conflate:
        s.setsockopt(zmq.CONFLATE, 1)
    if curve:
        s.curve_serverkey, s.curve_publickey, s.curve_secretkey = curve
    s.setsockopt(zmq.SUBSCRIBE, prefix)
    s.connect(address)
    return s


def recv(sock, timeout_ms=RECV_MS):
    if not sock.poll(timeout_ms, zmq.POLLIN):
        raise AssertionError(f"nothing received within {timeout_ms} ms")
    return sock.recv_multipart(zmq.NOBLOCK)


def sync(pub, sub, attempts=100):
    """Publish 'sync' events until the subscriber sees one (PUB/SUB slow joiner)."""
    for _ in range(attempts):
        pub.publish("event", P.event_msg("stream_restored", t_pub=0.0))
        if sub.poll(50, zmq.POLLIN):
            while sub.poll(100, zmq.POLLIN):  # drain the rest of the sync burst
                sub.recv()
            return
    raise AssertionError("subscription never reached the publisher")


def pred(seq):
    return P.pred_msg(seq=seq, t=float(seq), t_pub=float(seq) + 0.01, label="fist", index=1,
                      proba=[0.25, 0.75], confidence=0.75, rejected=False, model=1)


def test_messages_are_single_frames_that_decode(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        sub = sub_socket(ctx, pub.address)
        sync(pub, sub)
        pub.publish("pred", pred(1))
        frames = recv(sub)
        assert len(frames) == 1
        assert P.decode_pub(frames[0]) == ("pred", pred(1))
        assert pub.n_sent >= 2


def test_conflate_subscriber_reads_only_the_newest(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        sub = sub_socket(ctx, pub.address, b"pred ", conflate=True)
        for _ in range(100):  # sync with pred messages (events are filtered out)
            pub.publish("pred", pred(0))
            if sub.poll(50, zmq.POLLIN):
                break
        else:
            raise AssertionError("no sync")
        for seq in range(1, 51):
            pub.publish("pred", pred(seq))
        # wait until the last one has arrived: with CONFLATE the queue holds one message
        got = None
        for _ in range(50):
            topic, obj = P.decode_pub(recv(sub)[0])
            got = obj["seq"]
            if got == 50:
                break
        assert got == 50
        assert not sub.poll(200, zmq.POLLIN), "conflated socket delivered a stale message"


def test_topic_prefix_with_space_does_not_match_longer_topics(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        sub = sub_socket(ctx, pub.address, b"pred ")
        for _ in range(100):
            pub.publish("pred", pred(0))
            if sub.poll(50, zmq.POLLIN):
                break
        while sub.poll(100, zmq.POLLIN):
            sub.recv()
        pub.publish("predx", {"v": 1})
        pub.publish("feat", P.feat_msg(seq=1, t=0.0, x=[1.0], model=1))
        pub.publish("pred", pred(7))
        assert P.decode_pub(recv(sub)[0])[1]["seq"] == 7
        assert not sub.poll(200, zmq.POLLIN)


def test_publish_from_several_threads_delivers_every_message_whole(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx, sndhwm=5000) as pub:
        sub = sub_socket(ctx, pub.address, b"pred ")
        sub.rcvhwm = 5000
        for _ in range(100):
            pub.publish("pred", pred(0))
            if sub.poll(50, zmq.POLLIN):
                break
        while sub.poll(100, zmq.POLLIN):
            sub.recv()

        def worker(k):
            for i in range(200):
                pub.publish("pred", pred(1 + k * 1000 + i))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen = set()
        for _ in range(800):
            frames = recv(sub)
            assert len(frames) == 1
            seen.add(P.decode_pub(frames[0])[1]["seq"])
        assert seen == {1 + k * 1000 + i for k in range(4) for i in range(200)}


def test_unencodable_message_is_refused_and_nothing_is_sent(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        with pytest.raises(ProtocolError, match="NaN"):
            pub.publish("feat", {"v": 1, "x": [float("nan")]})
        assert pub.n_sent == 0


def test_closed_publisher_raises_and_close_is_idempotent(ctx):
    pub = Publisher("tcp://127.0.0.1:*", context=ctx)
    pub.close()
    pub.close()
    assert pub.closed
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish("pred", pred(1))


def test_port_in_use_names_the_address(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        with pytest.raises(OSError, match=pub.address.replace(".", r"\.")):
            Publisher(pub.address, context=ctx)


@pytest.mark.parametrize("addr,local", [
    ("tcp://127.0.0.1:5556", True), ("tcp://localhost:1", True), ("tcp://[::1]:1", True),
    ("tcp://127.1.2.3:1", True), ("ipc:///tmp/x", True), ("inproc://x", True),
    ("tcp://*:5556", False), ("tcp://0.0.0.0:1", False), ("tcp://eth0:1", False),
    ("tcp://192.168.1.5:1", False),
])
def test_is_local_address(addr, local):
    assert is_local_address(addr) is local


def test_non_loopback_bind_is_refused_with_the_reason(ctx):
    with pytest.raises(ValueError, match="not loopback.*CURVE.*allow_remote"):
        Publisher("tcp://0.0.0.0:*", context=ctx)
    pub = Publisher("tcp://0.0.0.0:*", context=ctx, allow_remote=True)
    pub.close()


def test_curve_admits_authorised_subscribers_only(ctx, tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir(), allowed.mkdir()
    server_pub, server_sec = zmq.curve_keypair()
    good_key, good_secret_file = zmq.auth.create_certificates(str(keys), "good")
    import shutil

    shutil.copy(good_key, allowed)
    good_pub, good_sec = zmq.auth.load_certificate(good_secret_file)
    bad_pub, bad_sec = zmq.curve_keypair()
    # keys by value and by certificate file both work; a CURVE bind may be non-loopback
    curve = CurveConfig(server_sec.decode(), server_pub.decode(), str(allowed))
    with Publisher("tcp://127.0.0.1:*", context=ctx, curve=curve) as pub:
        good = sub_socket(ctx, pub.address, curve=(server_pub, good_pub, good_sec))
        bad = sub_socket(ctx, pub.address, curve=(server_pub, bad_pub, bad_sec))
        plain = sub_socket(ctx, pub.address)
        sync(pub, good)
        for seq in range(1, 6):
            pub.publish("pred", pred(seq))
        assert P.decode_pub(recv(good)[0])[1]["seq"] == 1
        assert not bad.poll(300, zmq.POLLIN)
        assert not plain.poll(100, zmq.POLLIN)


def test_curve_key_from_certificate_files(ctx, tmp_path):
    pub_file, sec_file = zmq.auth.create_certificates(str(tmp_path), "server")
    curve = CurveConfig(sec_file, pub_file)
    public, secret = curve.keys()
    assert (public, secret) == zmq.auth.load_certificate(sec_file)
    with pytest.raises(ValueError, match="secret key"):
        CurveConfig(pub_file, pub_file).keys()
    with pytest.raises(ValueError, match="40-character Z85 key or a certificate"):
        CurveConfig("nonsense", "nonsense").keys()


def _until(predicate, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_wants_follows_the_subscribers_prefixes(ctx):
    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        assert not pub.wants("feat") and not pub.wants("pred")  # nobody connected
        preds = sub_socket(ctx, pub.address, b"pred")
        assert _until(lambda: pub.wants("pred"))
        assert not pub.wants("feat") and not pub.wants("event")
        everything = sub_socket(ctx, pub.address, b"")
        assert _until(lambda: pub.wants("feat"))
        assert pub.wants("event") and pub.wants("prompt")
        everything.close()  # its subscription goes with its connection
        assert _until(lambda: not pub.wants("feat"))
        assert pub.wants("pred")
        preds.setsockopt(zmq.UNSUBSCRIBE, b"pred")
        assert _until(lambda: not pub.wants("pred"))
        # "pred " (with the separator) matches pred, not a longer topic name
        spaced = sub_socket(ctx, pub.address, b"pred ")
        assert _until(lambda: pub.wants("pred"))
        assert not pub.wants("predx")
        spaced.close()
        preds.close()


def test_hostile_subscriptions_cannot_grow_the_publisher(ctx):
    """Many distinct prefixes: beyond the tracked number every topic counts as wanted
    (nothing is lost); an oversized message closes that peer's connection."""
    import time

    from emtl_stream.io.zmq_pub import MAX_SUBSCRIPTION_BYTES, MAX_TRACKED_SUBSCRIPTIONS

    with Publisher("tcp://127.0.0.1:*", context=ctx) as pub:
        big = ctx.socket(zmq.XSUB)
        big.linger = 0
        big.connect(pub.address)
        big.send(b"\x01" + b"x" * (2 * MAX_SUBSCRIPTION_BYTES))
        big.send(b"\x01after")  # never arrives: the connection was closed
        witness = sub_socket(ctx, pub.address, b"event")
        assert _until(lambda: pub.wants("event"))
        time.sleep(0.3)
        assert not pub.wants("feat")
        assert pub._prefixes == {b"event"}
        s = ctx.socket(zmq.XSUB)
        s.linger = 0
        s.connect(pub.address)
        s.send(b"not a subscription")  # ignored
        for i in range(3 * MAX_TRACKED_SUBSCRIPTIONS):
            s.send(b"\x01zz%d" % i)
        assert _until(lambda: pub.wants("feat"))  # untracked: everything is wanted
        assert len(pub._prefixes) == MAX_TRACKED_SUBSCRIPTIONS
        for sock in (s, big, witness):
            sock.close()
