"""LSL Markers in and out of the daemon: labels from a marker stream, prompts to one."""

import time

import pylsl
from daemon.conftest import daemon_config, free_port, wait_event, wait_for
from lsl_helpers import unique_id

from emtl_stream.io.client import Client
from emtl_stream.io.lsl_outlet import MarkerOutlet
from emtl_stream.io.store import StateStore


def test_labels_from_a_markers_stream_calibrate_the_map(tmp_path, source, start_player,
                                                        start_daemon):
    bundle = source[0]
    sid = unique_id("mk")
    marker_name = unique_id("labels")
    config = daemon_config(tmp_path / "state", sid, EMTL_STREAM_LABELS_STREAM=f'"{marker_name}"')
    player = start_player(sid)
    markers = MarkerOutlet(marker_name, source_id=unique_id("labels-src"))
    start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
            time.sleep(1.5)  # the daemon resolves the marker stream within ~1 s
            for cls in bundle.classes:
                player.set_class(cls)
                time.sleep(0.2)  # muscle activation settles before the label starts
                markers.push(cls, pylsl.local_clock())
                time.sleep(0.6)
                markers.push("none", pylsl.local_clock())
            markers.push("fit", pylsl.local_clock())
            done = wait_event(sub, ("calibration_done", "calibration_failed"), 20.0)
        assert done["kind"] == "calibration_done", done
        status = client.status()
        assert status["ok"] and status["model"] == done["model"] and status["model"] >= 2
        store = StateStore(tmp_path / "state")
        arrays, meta = store.load_burst(store.list_bursts()[-1]["id"])
        labels = arrays["labels"].tolist()
        # every class labelled, only with the windows that started after its marker
        # (0.6 s of labelling holds 0.6 - 0.2 (window) / 0.05 + 1 = 9 windows at most)
        for cls in bundle.classes:
            assert 2 <= labels.count(cls) <= 9, (cls, labels.count(cls))
        assert arrays["raw"].shape[0] == len(labels)
    finally:
        client.close()
        markers.close()


def test_unknown_label_marker_is_a_bad_input_event_and_the_daemon_keeps_serving(
        tmp_path, source, start_player, start_daemon):
    bundle = source[0]
    sid = unique_id("mk")
    marker_name = unique_id("labels")
    config = daemon_config(tmp_path / "state", sid, EMTL_STREAM_LABELS_STREAM=f'"{marker_name}"')
    start_player(sid)
    markers = MarkerOutlet(marker_name, source_id=unique_id("labels-src"))
    start_daemon(config, bundle=bundle)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("pred", "event")) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)
            time.sleep(1.5)
            markers.push("juggle", pylsl.local_clock())
            ev = wait_for(sub, lambda t, m: t == "event" and m.get("kind") == "bad_input", 10.0)
            assert "juggle" in ev["reason"]
            wait_for(sub, lambda t, m: t == "pred", 5.0)
        assert client.status()["ok"]
    finally:
        client.close()
        markers.close()


def test_prompts_are_mirrored_to_an_lsl_markers_outlet(tmp_path, source, start_player,
                                                       start_daemon):
    bundle = source[0]
    sid = unique_id("mk")
    pub = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(tmp_path / "state", sid, pub=pub,
                           EMTL_CALIBRATION_MARKERS_OUTLET="true")
    start_player(sid, follow_prompts=pub)
    start_daemon(config, bundle=bundle)
    found = pylsl.resolve_bypred(f"name='emtl-prompts' and source_id='emtl-prompts-"
                                 f"{config.zmq.control}'", 1, 5.0)
    assert found, "no emtl-prompts marker stream"
    inlet = pylsl.StreamInlet(found[0])
    inlet.open_stream(timeout=5.0)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    try:
        with client.subscribe(("event", "pred")) as sub:
            wait_for(sub, lambda t, m: t == "pred", 20.0)  # the stream is connected
            reply = client.recalibrate(classes=bundle.classes[:2], seconds_per_class=0.4)
            assert reply["ok"], reply
            wait_event(sub, ("calibration_done", "calibration_failed"), 30.0)
        got = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(got) < 3:
            sample, _ = inlet.pull_sample(timeout=0.5)
            if sample:
                got.append(sample[0])
        # class, rest, class: the schedule of a two-class burst
        assert got[:3] == [bundle.classes[0], "rest", bundle.classes[1]], got
    finally:
        client.close()
        inlet.close_stream()
