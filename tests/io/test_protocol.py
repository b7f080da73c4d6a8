"""Wire format: round trips, builders' required fields, every malformed request."""

from __future__ import annotations

from pathlib import Path
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emtl_stream.errors import ProtocolError
from emtl_stream.io import protocol as P

PRED = dict(seq=3, t=12.5, t_pub=12.51, label="fist", index=1, proba=[0.1, 0.9],
            confidence=0.9, rejected=False, model=2)


def test_pub_frame_is_topic_space_compact_json():
    frame = P.encode_pub("pred", P.pred_msg(**PRED))
    topic, _, body = frame.partition(b" ")
    assert topic == b"pred"
    assert json.loads(body) == {"v": 1, **PRED}
    assert b", " not in body and b": " not in body  # compact


def test_pub_round_trip_with_unicode_and_numpy_values():
    obj = {"v": 1, "label": "Faust ✊", "x": np.arange(3.0), "n": np.int64(4), "f": np.float32(0.5)}
    topic, back = P.decode_pub(P.encode_pub("feat", obj))
    assert topic == "feat"
    assert back == {"v": 1, "label": "Faust ✊", "x": [0.0, 1.0, 2.0], "n": 4, "f": 0.5}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6),
       st.sampled_from(list(P.TOPICS)))
def test_pub_round_trip_property(obj, topic):
    assert P.decode_pub(P.encode_pub(topic, obj)) == (topic, obj)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(bad):
    with pytest.raises(ProtocolError, match="NaN or infinity"):
        P.encode_pub("pred", {"v": 1, "x": [1.0, bad]})
    with pytest.raises(ProtocolError, match="finite"):
        P.pred_msg(**{**PRED, "proba": [bad, 1.0]})
    with pytest.raises(ProtocolError, match="confidence"):
        P.pred_msg(**{**PRED, "confidence": bad})
    with pytest.raises(ProtocolError, match="x must be finite"):
        P.feat_msg(seq=1, t=0.0, x=np.array([0.0, bad]), model=1)
    with pytest.raises(ProtocolError, match="NaN"):
        P.event_msg("shift_suspected", t_pub=1.0, reason="r", log_likelihood=bad)


@pytest.mark.parametrize("topic", ["", "pr ed", "préd", 5, "a\0"])
def test_bad_topics(topic):
    with pytest.raises(ProtocolError, match="topic"):
        P.encode_pub(topic, {"v": 1})


@pytest.mark.parametrize("frame", [b"pred", b" {}", b"pred {", b"pred [1]", b"pred \xff",
                                   b"pred {\"a\": NaN}"])
def test_decode_pub_rejects_malformed_frames(frame):
    with pytest.raises(ProtocolError):
        P.decode_pub(frame)


def test_builders_have_exactly_the_required_fields():
    assert set(P.pred_msg(**PRED)) == {"v", *P.TOPICS["pred"]}
    assert set(P.feat_msg(seq=1, t=0.0, x=[1.0], model=1)) == {"v", *P.TOPICS["feat"]}
    assert set(P.prompt_msg(cls="fist", remaining_s=0.5, step=1, of=4)) == {"v", *P.TOPICS["prompt"]}
    for kind, required in P.EVENT_KINDS.items():
        fields = {f: "x" for f in required}
        assert set(P.event_msg(kind, t_pub=1.0, **fields)) == {"v", "kind", "t_pub", *required}


def test_builders_validate_and_keep_extras():
    assert P.pred_msg(**PRED, voted=True)["voted"] is True
    with pytest.raises(ProtocolError, match="overwrite"):
        P.pred_msg(**PRED, v=2)
    with pytest.raises(ProtocolError, match="seq"):
        P.pred_msg(**{**PRED, "seq": -1})
    with pytest.raises(ProtocolError, match="index"):
        P.pred_msg(**{**PRED, "index": True})
    with pytest.raises(ProtocolError, match="event kind"):
        P.event_msg("exploded", t_pub=1.0)
    with pytest.raises(ProtocolError, match="reason"):
        P.event_msg("calibration_failed", t_pub=1.0)
    with pytest.raises(ProtocolError, match="beyond"):
        P.prompt_msg(cls="fist", remaining_s=0.5, step=5, of=4)
    assert P.prompt_msg(cls="rest", remaining_s=-0.01, step=1, of=1)["remaining_s"] == 0.0


# ------------------------------------------------------------------ requests
def req(obj) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("obj,cmd,fields", [
    ({"v": 1, "cmd": "status"}, "status", {}),
    ({"v": 1, "cmd": "recalibrate"}, "recalibrate", {}),
    ({"v": 1, "cmd": "recalibrate", "classes": ["a", "b"], "seconds_per_class": 1,
      "repetitions": 2}, "recalibrate", {"classes": ["a", "b"], "seconds_per_class": 1.0,
                                         "repetitions": 2}),
    ({"v": 1, "cmd": "label", "label": "fist"}, "label", {"label": "fist"}),
    ({"v": 1, "cmd": "label", "label": None}, "label", {"label": None}),
    ({"v": 1, "cmd": "fit", "min_windows": 5}, "fit", {"min_windows": 5}),
    ({"v": 1, "cmd": "rollback", "version": 0}, "rollback", {"version": 0}),
    ({"v": 1, "cmd": "rollback"}, "rollback", {}),
    ({"v": 1, "cmd": "cancel"}, "cancel", {}),
    ({"v": 1, "cmd": "save"}, "save", {}),
    ({"v": 1, "cmd": "shutdown"}, "shutdown", {}),
])
def test_good_requests(obj, cmd, fields):
    r = P.parse_request(req(obj))
    assert r == P.Request(cmd, fields)
    assert type(r.fields.get("seconds_per_class", 0.0)) is float


def test_encode_request_round_trips_for_every_command():
    for cmd in P.COMMANDS:
        fields = {"label": "a"} if cmd == "label" else {}
        assert P.parse_request(P.encode_request(cmd, **fields)) == P.Request(cmd, fields)


@pytest.mark.parametrize("data,reason", [
    (b"x" * 65537, "exceeds the limit of 65536"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"status", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"v": 1, "cmd": "status", "x": NaN}', "not valid JSON"),
    (b'{"v": 1, "v": 1, "cmd": "status"}', "duplicate key"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"status"', "must be a JSON object"),
    (b'{"cmd": "status"}', 'no protocol version field "v"'),
    (b'{"v": 2, "cmd": "status"}', "unsupported protocol version v=2"),
    (b'{"v": "1", "cmd": "status"}', "unsupported protocol version"),
    (b'{"v": true, "cmd": "status"}', "unsupported protocol version"),
    (b'{"v": 1}', 'no "cmd" field'),
    (b'{"v": 1, "cmd": "explode"}', "unknown command 'explode'"),
    (b'{"v": 1, "cmd": 3}', "unknown command 3"),
    (b'{"v": 1, "cmd": "status", "verbose": true}', "unknown field(s) ['verbose']"),
    (b'{"v": 1, "cmd": "label"}', "needs field 'label'"),
    (b'{"v": 1, "cmd": "label", "label": 3}', "label.label must be a class name"),
    (b'{"v": 1, "cmd": "label", "label": ""}', "class name"),
    (b'{"v": 1, "cmd": "recalibrate", "classes": "fist"}', "recalibrate.classes must be a"),
    (b'{"v": 1, "cmd": "recalibrate", "classes": []}', "non-empty list"),
    (b'{"v": 1, "cmd": "recalibrate", "classes": ["a", "a"]}', "twice"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": -1}', "must be >= 0.1"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": "1"}', "must be a number"),
    (b'{"v": 1, "cmd": "recalibrate", "repetitions": 1.5}', "must be an integer"),
    (b'{"v": 1, "cmd": "recalibrate", "repetitions": 0}', "must be >= 1"),
    (b'{"v": 1, "cmd": "fit", "min_windows": false}', "must be an integer"),
    (b'{"v": 1, "cmd": "rollback", "version": -1}', "must be >= 0"),
])
def test_malformed_requests_give_a_readable_reason(data, reason):
    with pytest.raises(ProtocolError) as info:
        P.parse_request(data, max_bytes=65536)
    assert reason in str(info.value)


def test_size_limit_is_checked_before_decoding():
    # exactly at the limit passes the size check (then fails as JSON), one over does not
    with pytest.raises(ProtocolError, match="not valid JSON"):
        P.parse_request(b" " * 100, max_bytes=100)
    with pytest.raises(ProtocolError, match="101 bytes exceeds"):
        P.parse_request(b" " * 101, max_bytes=100)


def test_replies():
    assert json.loads(P.reply_ok(state="streaming")) == {"v": 1, "ok": True, "state": "streaming"}
    assert json.loads(P.reply_error("nope")) == {"v": 1, "ok": False, "error": "nope"}
    assert P.parse_reply(P.reply_ok(a=[1])) == {"v": 1, "ok": True, "a": [1]}
    with pytest.raises(ProtocolError, match="NaN"):
        P.reply_ok(x=float("nan"))
    with pytest.raises(ProtocolError):
        P.reply_ok(ok=False)
    with pytest.raises(ProtocolError, match="boolean"):
        P.parse_reply(b'{"v": 1}')
    with pytest.raises(ProtocolError, match="version"):
        P.parse_reply(b'{"v": 9, "ok": true}')


def test_error_table_in_docs_matches_the_code():
    import re

    REPO = Path(__file__).resolve().parents[2]

    text = (REPO / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `([^`]*)` \| `([^`]*)` \|$", text, re.M)
    literal = [(r, e) for r, e in rows if r.startswith(("{", "[")) or r == "status"]
    assert len(literal) >= 5
    for request, error in literal:
        with pytest.raises(ProtocolError) as info:
            P.parse_request(request.encode())
        expected = error.replace("...", "")
        assert str(info.value).startswith(expected.rstrip()), (request, str(info.value))
    with pytest.raises(ProtocolError, match=re.escape("request is not UTF-8 (invalid start byte "
                                                      "at byte 0).")):
        P.parse_request(b"\xff\xfe")
    with pytest.raises(ProtocolError, match="request of 70000 bytes exceeds the limit of 65536"):
        P.parse_request(b" " * 70000)


# ------------------------------------------------------------------ hostile requests
@pytest.mark.parametrize("data,reason", [
    # absurd counts and durations: refused with the field and its bound
    (b'{"v": 1, "cmd": "recalibrate", "repetitions": 1000000000000000000000000000000}',
     "recalibrate.repetitions must be <= 20"),
    (b'{"v": 1, "cmd": "train", "repetitions": 1000000}', "train.repetitions must be <= 20"),
    (b'{"v": 1, "cmd": "recalibrate", "repetitions": 1e30}', "must be an integer"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": 1e300}',
     "recalibrate.seconds_per_class must be <= 600"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": 1e308, "repetitions": 10}',
     "recalibrate.seconds_per_class must be <= 600"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": 1e309}', "out of range"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": 0.01}',
     "recalibrate.seconds_per_class must be >= 0.1"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": 300, "repetitions": 3}',
     "seconds_per_class x repetitions must be <= 600"),
    (b'{"v": 1, "cmd": "fit", "min_windows": 10000001}', "fit.min_windows must be <= 1000000"),
    (b'{"v": 1, "cmd": "rollback", "version": 2147483648}',
     "rollback.version must be <= 2147483647"),
    (b'{"v": 1, "cmd": "recalibrate", "classes": ["c%d"]}' % 0, None),
    # strict version: a float or a bool is not the integer 1
    (b'{"v": 1.0, "cmd": "status"}', "unsupported protocol version v=1.0"),
    (b'{"v": 1e0, "cmd": "status"}', "unsupported protocol version"),
    # null is not "default": omit the field instead
    (b'{"v": 1, "cmd": "recalibrate", "classes": null}', "recalibrate.classes must not be null"),
    (b'{"v": 1, "cmd": "recalibrate", "seconds_per_class": null}', "must not be null"),
    (b'{"v": 1, "cmd": "train", "repetitions": null}', "train.repetitions must not be null"),
    (b'{"v": 1, "cmd": "fit", "min_windows": null}', "fit.min_windows must not be null"),
    (b'{"v": 1, "cmd": "rollback", "version": null}', "rollback.version must not be null"),
    (b'{"v": 1, "cmd": "recalibrate", "labels": null}', "recalibrate.labels must not be null"),
    (b'{"v": 1, "cmd": "recalibrate", "labels": 1}', "recalibrate.labels must be true or false"),
    (b'{"v": 1, "cmd": "train", "labels": true}', "unknown field(s) ['labels']"),
    # a ramp session is prompted: typed, and never zero-label
    (b'{"v": 1, "cmd": "recalibrate", "ramp": 1}', "recalibrate.ramp must be true or false"),
    (b'{"v": 1, "cmd": "recalibrate", "ramp": true, "labels": false}',
     "ramp and labels: false cannot be combined"),
    (b'{"v": 1, "cmd": "train", "ramp": true}', "unknown field(s) ['ramp']"),
    (b'{"v": 1, "cmd": "recalibrate", "repetitions": true}', "must be an integer"),
    # a 5000-digit integer: the documented bound, not Python's digit-limit advice
    (b'{"v": 1, "cmd": "rollback", "version": ' + b"9" * 5000 + b"}",
     "request holds an integer of 5000 digits, beyond every bound (integers have at most 64"),
    (b'{"v": 1, "cmd": "fit", "min_windows": -' + b"9" * 4400 + b"}", "4400 digits"),
])
def test_hostile_requests_are_refused_naming_field_and_bound(data, reason):
    if reason is None:
        assert P.parse_request(data).fields == {"classes": ["c0"]}
        return
    with pytest.raises(ProtocolError) as info:
        P.parse_request(data)
    assert reason in str(info.value)


def test_class_lists_and_names_are_bounded():
    names = [f"c{i}" for i in range(P.MAX_CLASSES)]
    got = P.parse_request(req({"v": 1, "cmd": "train", "classes": names}))
    assert got.fields["classes"] == names
    with pytest.raises(ProtocolError, match=r"train.classes lists 33 classes; at most 32"):
        P.parse_request(req({"v": 1, "cmd": "train", "classes": names + ["x"]}))
    long = "a" * (P.MAX_NAME_CHARS + 1)
    for obj in ({"v": 1, "cmd": "recalibrate", "classes": [long]},
                {"v": 1, "cmd": "label", "label": long}):
        with pytest.raises(ProtocolError, match="at most 64 characters"):
            P.parse_request(req(obj))
    with pytest.raises(ProtocolError, match="control characters"):
        P.parse_request(req({"v": 1, "cmd": "label", "label": "fi\nst"}))
    assert P.parse_request(req({"v": 1, "cmd": "label", "label": "a" * 64})).fields == {
        "label": "a" * 64}


def test_bounds_are_inclusive_and_documented():
    ok = P.parse_request(req({"v": 1, "cmd": "recalibrate", "seconds_per_class": 600,
                              "repetitions": 1, "labels": False}))
    assert ok.fields == {"seconds_per_class": 600.0, "repetitions": 1, "labels": False}
    assert P.parse_request(req({"v": 1, "cmd": "recalibrate", "repetitions": 20,
                                "seconds_per_class": 30})).fields["repetitions"] == 20
    assert P.parse_request(req({"v": 1, "cmd": "rollback", "version": 2**31 - 1})).fields == {
        "version": 2**31 - 1}
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    for cmd, spec in P.COMMANDS.items():
        for name, fs in spec.items():
            row = f"| `{cmd}` | `{name}` | {fs.kind} | {fs.bounds} |"
            assert row in text, row


@pytest.mark.parametrize("depth", [5, 100, 985, 986, 5000, 30000])
def test_deep_nesting_is_refused_without_recursion(depth):
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        body = '{"v": 1, "cmd": "status", "x": ' + opener * depth + closer * depth + "}"
        with pytest.raises(ProtocolError) as info:
            P.parse_request(body.encode(), max_bytes=1 << 20)
        assert "nested" in str(info.value) or "unknown field" in str(info.value)
    with pytest.raises(ProtocolError, match="nested"):
        # unterminated, still one clean error
        P.parse_request(("[" * depth).encode(), max_bytes=1 << 20)


def test_brackets_inside_strings_do_not_count_as_nesting():
    r = P.parse_request(req({"v": 1, "cmd": "label", "label": "[[[[[[[[[[{{{{{{{{\\\"]"}))
    assert r.fields["label"] == "[[[[[[[[[[{{{{{{{{\\\"]"
    with pytest.raises(ProtocolError, match="nested"):
        P.decode_pub(b"pred " + b'{"a":' * 2000 + b"1" + b"}" * 2000)
    with pytest.raises(ProtocolError, match="nested"):
        P.parse_reply(b"[" * 2000 + b"]" * 2000)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(alphabet='[]{}":,1 \\a', max_size=3000).map(str.encode))
def test_any_bytes_give_a_request_or_a_protocol_error(data):
    try:
        P.parse_request(data)
    except ProtocolError:
        pass


def test_vectors_whose_sum_overflows_are_finite_and_sent_exactly():
    msg = P.feat_msg(seq=1, t=0.5, x=[1e308, 1e308, -2.5], model=None)
    assert msg["x"] == [1e308, 1e308, -2.5]
    assert P.decode_pub(P.encode_pub("feat", msg))[1]["x"] == [1e308, 1e308, -2.5]
    for bad in ([1.0, float("nan")], [-1.0, -np.inf], [1e308, np.inf]):
        with pytest.raises(ProtocolError, match="element 1"):
            P.feat_msg(seq=1, t=0.5, x=bad, model=None)


def test_numbers_of_any_numeric_type_give_the_same_message():
    plain = P.pred_msg(seq=3, t=1.25, t_pub=1.5, label="rest", index=0, proba=[1.0],
                              confidence=1.0, rejected=False, model=2)
    as_numpy = P.pred_msg(seq=np.int64(3), t=np.float64(1.25), t_pub=np.float32(1.5),
                              label="rest", index=np.int32(0), proba=np.ones(1),
                              confidence=np.float64(1.0), rejected=np.bool_(False),
                              model=np.int64(2))
    assert P.encode_pub("pred", plain) == P.encode_pub("pred", as_numpy)
    with pytest.raises(ProtocolError, match="seq must be >= 0"):
        P.pred_msg(seq=-1, t=1.0, t_pub=1.0, label="rest", index=0, proba=[1.0],
                          confidence=1.0, rejected=False, model=None)
