"""The page in a real headless chromium: daemon + synthetic armband + ui server.

Every check reads what the page shows (text, buttons by accessible name) and compares
it with what the daemon said on its own sockets (an independent subscriber and
``status`` requests), never with the ui server's state.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from daemon.conftest import daemon_config, free_port, wait_event
from lsl_helpers import unique_id
from playwright.sync_api import expect
from ui.helpers import http_request, screenshot

from emtl_stream.io.client import Client

pytestmark = pytest.mark.slow


def display(name: str) -> str:
    """How the page writes a class name (underscores to spaces, first letter upper)."""
    s = name.replace("_", " ").strip()
    return s[:1].upper() + s[1:]


def open_page(page, ui, view: str):
    page.goto(ui.url + f"#{view}")
    expect(page.locator("#conn")).to_have_text(re.compile("^Connected to the daemon"))
    return page


def recalibrate_button(page):
    return page.get_by_role("button", name="Recalibrate", exact=True)


def test_page_shows_predictions_that_change(live, ui, page):
    open_page(page, ui, "operator")
    label = page.locator("#o-label")
    for cls in ("open", "close", "flex"):
        live.player.set_class(cls)
        expect(label).to_have_text(display(cls))
    status = live.client.status()
    expect(page.locator("#h-channels")).to_have_text(str(status["stream"]["channels"]))
    expect(page.locator("#h-stream")).to_contain_text("connected")
    expect(page.locator("#o-proba .row")).to_have_count(len(status["classes"]))
    expect(page.locator("#a-bars .chbar")).to_have_count(status["stream"]["channels"])
    latency = page.locator("#h-latency").text_content()
    assert re.fullmatch(r"\d+\.\d ms", latency), latency
    screenshot(page, "operator_live")


@pytest.fixture
def slow_live(tmp_path, source, start_player, start_daemon):
    """Like ``live`` but with rest prompts long enough to be watched (1 s)."""
    sid = unique_id("ui")
    pub = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(tmp_path / "state", sid, pub=pub, EMTL_CALIBRATION_REST_S="1.0",
                           EMTL_CALIBRATION_LEAD_IN_S="0.3")
    player = start_player(sid, follow_prompts=pub)
    start_daemon(config, bundle=source[0])
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    yield config, player, client
    client.close()


def test_recalibrate_button_runs_to_done_and_the_prompt_follows_the_daemon(
        slow_live, start_ui, browser, page):
    config, player, client = slow_live
    ui = start_ui(config.zmq.control, config.zmq.pub, feature_names=config.features.names)
    classes = client.status()["classes"]
    chosen = classes[1:4]  # a subset, chosen with the checkboxes
    operator = open_page(page, ui, "operator")
    patient = open_page(browser.new_page(), ui, "patient")
    try:
        expect(patient.locator("#p-idle-text")).to_have_text("No calibration running. Relax.")
        for c in classes:
            box = operator.get_by_role("checkbox", name=display(c), exact=True)
            (box.check if c in chosen else box.uncheck)()
        operator.get_by_label("Seconds per class").fill("1.2")
        shown: dict[int, tuple] = {}
        prompts: dict[int, str] = {}
        with client.subscribe(("prompt", "event")) as sub:
            recalibrate_button(operator).click()
            started = wait_event(sub, "calibration_started", 10.0)
            assert started["classes"] == chosen and started["seconds_per_class"] == 1.2
            expect(recalibrate_button(operator)).to_be_disabled()
            # Poll the patient view while reading the daemon's own prompts.
            done = None
            shots = set()
            while done is None:
                got = sub.recv(timeout_s=0.02)
                while got is not None:
                    topic, msg = got
                    if topic == "prompt":
                        prompts[msg["step"]] = msg["class"]
                    elif msg["kind"] in ("calibration_done", "calibration_failed"):
                        done = msg
                        break
                    got = sub.recv(timeout_s=0)
                if done is None and patient.locator("#p-active").is_visible():
                    step_text = patient.locator("#p-step").text_content()
                    m = re.fullmatch(r"Step (\d+) of (\d+)", step_text or "")
                    if m:
                        step = int(m.group(1))
                        nxt = patient.locator("#p-next")
                        shown.setdefault(step, (
                            patient.locator("#p-class").text_content(), int(m.group(2)),
                            patient.locator("#p-next-name").text_content()
                            if nxt.is_visible() else None))
                        kind = "rest" if step % 2 == 0 else "class"
                        if kind not in shots and step > 1:
                            screenshot(patient, f"patient_{kind}")
                            if kind == "class":
                                screenshot(operator, "operator_calibrating")
                            shots.add(kind)
            assert done["kind"] == "calibration_done", done
        # Schedule: chosen classes with a rest between two of them.
        n_steps = 2 * len(chosen) - 1
        assert sorted(prompts) == list(range(1, n_steps + 1))
        assert [prompts[s] for s in range(1, n_steps + 1, 2)] == chosen
        # The page showed every class step the daemon prompted, with the right name,
        # and during rests "Up next" named the class the daemon prompted next.
        for step in range(1, n_steps + 1, 2):
            assert step in shown, (step, shown)
            assert shown[step] == (display(prompts[step]), n_steps, None), (step, shown[step])
        rests = [s for s in range(2, n_steps + 1, 2) if s in shown]
        assert rests, f"no rest step seen on the page: {shown}"
        for step in rests:
            assert shown[step] == ("Rest", n_steps, display(prompts[step + 1])), shown[step]
        expect(operator.locator("#c-progress")).to_have_text(
            f"Last calibration done: map {done['model']} is live.")
        assert client.status()["model"] == done["model"]
        expect(patient.locator("#p-idle-text")).to_have_text("Calibration done. Thank you!")
        expect(recalibrate_button(operator)).to_be_enabled()
        row = operator.locator("#m-rows tr.live")
        expect(row).to_contain_text(f"{done['model']} (live)")
        expect(row).to_contain_text("prompted")
        screenshot(operator, "operator_after_recalibration")
    finally:
        patient.close()


def test_rollback_button_changes_status_model(live, ui, page):
    with live.client.subscribe(("event",)) as sub:
        assert live.client.recalibrate(seconds_per_class=0.6)["ok"]
        done = wait_event(sub, ("calibration_done", "calibration_failed"), 60.0)
    assert done["kind"] == "calibration_done", done
    open_page(page, ui, "operator")
    expect(page.locator("#m-rows tr.live")).to_contain_text(f"{done['model']} (live)")
    page.get_by_role("button", name="Roll back", exact=True).click()
    expect(page.locator("#cmd-result")).to_have_text(
        re.compile(rf"Roll back: map (\d+) is live \(was {done['model']}\)"))
    status = live.client.status()
    assert status["model"] != done["model"] and status["model"] in status["maps"]
    expect(page.locator("#m-rows tr.live")).to_contain_text(f"{status['model']} (live)")
    expect(page.locator("#m-rows tr").first).to_contain_text(f"rollback (from map {done['model']})")
    screenshot(page, "operator_rollback")
    # and back again with the row's own button
    page.get_by_role("button", name=f"Make map {done['model']} live").click()
    expect(page.locator("#cmd-result")).to_contain_text(f"map {done['model']} is live")
    assert live.client.status()["model"] == done["model"]


def test_button_pressed_twice_starts_one_calibration(live, ui, page):
    open_page(page, ui, "operator")
    kinds = []
    with live.client.subscribe(("event",)) as sub:
        recalibrate_button(page).dblclick()
        wait_event(sub, "calibration_started", 10.0)
        # A second request that reaches the daemon mid-calibration (another page, a
        # stale tab) is refused with the daemon's reason, and nothing else starts.
        code, _, body = http_request(ui.url, "POST", "/api/recalibrate", {})
        second = json.loads(body)
        assert code == 200 and not second["ok"] and "in progress" in second["error"], second
        while True:
            got = sub.recv(timeout_s=30.0)
            assert got is not None, "no calibration outcome"
            kinds.append(got[1]["kind"])
            if got[1]["kind"] in ("calibration_done", "calibration_failed"):
                break
    assert "calibration_started" not in kinds, kinds
    expect(page.locator("#cmd-result")).to_have_class("ok")
    expect(page.locator("#cmd-result")).to_contain_text("Recalibrate: started")


def test_refused_recalibration_shows_the_daemons_reason(live, ui, page):
    open_page(page, ui, "operator")
    live.player.stop()  # no EMG: the daemon refuses to recalibrate
    expect(page.locator("#h-stream")).to_contain_text("NOT connected", timeout=30_000)
    expect(page.locator("#card-pred")).to_have_class(re.compile(r"\bstale\b"))
    recalibrate_button(page).click()
    result = page.locator("#cmd-result")
    expect(result).to_have_class("err")
    reason = live.client.recalibrate()["error"]  # the same request, asked directly
    expect(result).to_have_text(f"Recalibrate refused by the daemon: {reason}")
    expect(page.locator("#alerts li[data-kind=stream_lost]").first).to_contain_text(
        "EMG stream lost")
    screenshot(page, "operator_refused")


def test_zero_label_button_shows_the_daemons_answer(live, ui, page):
    open_page(page, ui, "operator")
    with page.expect_response("**/api/recalibrate") as info:
        page.get_by_role("button", name="Recalibrate without labels").click()
    reply = info.value.json()
    result = page.locator("#cmd-result")
    if reply["ok"]:
        expect(result).to_have_text(re.compile(r"^Recalibrate without labels: started"))
    else:
        expect(result).to_have_text(f"Recalibrate without labels refused by the daemon: "
                                    f"{reply['error']}")


def test_daemon_absent_then_restarted(tmp_path, source, start_player, start_daemon, start_ui,
                                      page):
    control, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ui = start_ui(control, pub)
    page.goto(ui.url + "#operator")
    conn = page.locator("#conn")
    expect(conn).to_have_text(re.compile(rf"^Daemon not reachable at {re.escape(control)}"))
    patient = page.context.new_page()
    try:
        patient.goto(ui.url + "#patient")
        expect(patient.locator("#p-banner")).to_have_text("Not connected — please wait")
        screenshot(patient, "patient_no_daemon")
        sid = unique_id("ui")
        player = start_player(sid, follow_prompts=pub)
        config = daemon_config(tmp_path / "state", sid, pub=pub, control=control)
        daemon = start_daemon(config, bundle=source[0])
        expect(conn).to_have_text(re.compile("^Connected to the daemon"), timeout=30_000)
        expect(patient.locator("#p-banner")).to_be_hidden()
        player.set_class("open")
        expect(page.locator("#o-label")).to_have_text("Open")
        daemon.stop(timeout=10.0)
        expect(conn).to_have_text(re.compile("^Daemon not reachable"))
        expect(page.locator("#alerts li[data-kind=daemon_lost]").first).to_be_visible()
        start_daemon(config, bundle=source[0])  # same addresses, same state directory
        expect(conn).to_have_text(re.compile("^Connected to the daemon"), timeout=30_000)
        player.set_class("close")
        expect(page.locator("#o-label")).to_have_text("Close")
    finally:
        patient.close()


def test_ui_server_restart_is_survived_by_the_page(live, start_ui, page):
    ui = start_ui(live.control, live.pub)
    port = ui.port
    open_page(page, ui, "operator")
    ui.stop()
    expect(page.locator("#conn")).to_have_text(
        "Lost the connection to the ui server — reconnecting…")
    expect(recalibrate_button(page)).to_be_disabled()
    again = start_ui(live.control, live.pub, address=f"127.0.0.1:{port}")
    expect(page.locator("#conn")).to_have_text(re.compile("^Connected to the daemon"),
                                               timeout=30_000)
    expect(recalibrate_button(page)).to_be_enabled()
    live.player.set_class("flex")
    expect(page.locator("#o-label")).to_have_text("Flex")


def test_shift_alert_is_shown_in_plain_words(tmp_path, source, start_player, start_daemon,
                                             start_ui, page):
    """A model with its detector reference (as ``train`` writes it); the armband rolls."""
    import dataclasses

    import numpy as np

    from emtl_stream.daemon.shift import ShiftReference
    from emtl_stream.pipeline.offline import featurize
    from daemon.conftest import STEP_MS, WINDOW_MS, armband

    bundle = source[0]
    m = bundle.components.n_features
    arm = armband()  # held-out unshifted windows cycling the classes, as live data does
    emg = np.vstack([arm.generate(int(0.6 * arm.fs), c) for _ in range(4) for c in bundle.classes])
    X, _, _ = featurize(emg, arm.fs, bundle.make_extractor(), WINDOW_MS, STEP_MS)
    ref = ShiftReference.from_windows(bundle.components, np.eye(m), np.zeros(m), X)
    bundle = dataclasses.replace(bundle, meta={**bundle.meta, "shift_reference": ref.to_dict()})
    sid = unique_id("ui")
    config = daemon_config(tmp_path / "state", sid)
    player = start_player(sid)
    start_daemon(config, bundle=bundle)
    ui = start_ui(config.zmq.control, config.zmq.pub)
    client = Client(config.zmq.control, config.zmq.pub, timeout_s=5.0)
    open_page(page, ui, "operator")
    try:
        with client.subscribe(("event", "pred")) as sub:
            player.set_class("close")
            player.set_shift(3.0)  # rolling the armband by three electrodes
            event = wait_event(sub, "shift_suspected", 60.0)
    finally:
        client.close()
    alert = page.locator("#alerts li[data-kind=shift_suspected]").first
    expect(alert).to_contain_text(f"Electrode shift suspected: {event['reason']}")
    expect(alert).to_have_class("warning")


def test_rejection_state_reaches_the_page(tmp_path, source, start_player, start_daemon,
                                          start_ui, page):
    sid = unique_id("ui")
    pub = f"tcp://127.0.0.1:{free_port()}"
    # reject_below = 1: every window that is not certain is rejected.
    config = daemon_config(tmp_path / "state", sid, pub=pub, EMTL_CLASSIFY_REJECT_BELOW="1.0")
    player = start_player(sid, follow_prompts=pub)
    start_daemon(config, bundle=source[0])
    ui = start_ui(config.zmq.control, config.zmq.pub)
    open_page(page, ui, "operator")
    badge = page.locator("#o-rejected")
    # Rejections come in short bursts at class changes: the page notes every badge it
    # showed (checked every 5 ms) so the test does not have to catch the moment.
    page.evaluate("""() => { window.badgeSeen = 0; setInterval(() => {
        if (!document.getElementById('o-rejected').hidden) window.badgeSeen++; }, 5); }""")
    rejected = 0
    # The page gets the latest pred at most MAX_PUSH_HZ times a second, so a rejection
    # burst of one or two windows can be superseded before a push: keep changing class
    # (up to 30 s) until the page has shown one.
    classes = ("open", "close", "flex", "ext", "rest")
    deadline = time.monotonic() + 30.0
    with Client(config.zmq.control, pub).subscribe(("pred",)) as sub:
        for i in range(1000):
            player.set_class(classes[i % len(classes)])  # class changes: uncertain windows
            t_end = time.monotonic() + 0.5
            while time.monotonic() < t_end:
                got = sub.recv(timeout_s=0.1)
                rejected += bool(got and got[1]["rejected"])
            if (rejected and page.evaluate("window.badgeSeen") > 0) or \
                    time.monotonic() > deadline:
                break
    assert rejected, "the daemon rejected no window at reject_below = 1"
    assert page.evaluate("window.badgeSeen") > 0, "the page never showed the rejection"
    expect(badge).to_have_text("rejected: hold still")


def test_operator_view_shows_the_proportional_speed(tmp_path, source, start_player,
                                                    start_daemon, start_ui, page):
    """A model with a speed calibration: the page shows pred's ``speed`` as a number."""
    import dataclasses

    from emtl_stream.model.speed import calibrate_bundle_speed

    bundle, _, X, y = source
    bundle = dataclasses.replace(bundle, meta={**bundle.meta,
                                               "speed": calibrate_bundle_speed(bundle, X, y)})
    sid = unique_id("ui")
    config = daemon_config(tmp_path / "state", sid)
    player = start_player(sid)
    start_daemon(config, bundle=bundle)
    ui = start_ui(config.zmq.control, config.zmq.pub)
    open_page(page, ui, "operator")
    speed = page.locator("#o-speed")
    player.set_class("close")
    expect(page.locator("#o-label")).to_have_text(display("close"))
    expect(speed).to_have_text(re.compile(r"^[01]\.\d\d$"))
    player.set_class("rest")
    expect(page.locator("#o-label")).to_have_text(display("rest"))
    expect(speed).to_have_text("0.00")  # rest is always still


def test_ramp_button_runs_a_ramp_session_and_the_patient_is_told_to_ramp(
        slow_live, start_ui, browser, page):
    config, player, client = slow_live
    ui = start_ui(config.zmq.control, config.zmq.pub, feature_names=config.features.names)
    operator = open_page(page, ui, "operator")
    patient = open_page(browser.new_page(), ui, "patient")
    try:
        operator.get_by_label("Seconds per class").fill("1.0")
        model = client.status()["model"]
        instructions, shown = {}, {}
        with client.subscribe(("prompt", "event")) as sub:
            operator.get_by_role("button", name="Calibrate speed (ramps)").click()
            started = wait_event(sub, "calibration_started", 10.0)
            assert started["purpose"] == "ramp" and started["ramp"] is True
            assert "rest" not in started["classes"]  # the resting class has no speed
            done = None
            while done is None:
                got = sub.recv(timeout_s=0.02)
                while got is not None:
                    topic, msg = got
                    if topic == "prompt" and msg.get("ramp"):
                        instructions[msg["class"]] = msg["instruction"]
                    elif topic == "event" and msg["kind"] in ("calibration_done",
                                                              "calibration_failed"):
                        done = msg
                        break
                    got = sub.recv(timeout_s=0)
                if done is None and patient.locator("#p-active").is_visible():
                    cls = patient.locator("#p-class").text_content()
                    text = patient.locator("#p-instruction").text_content()
                    if cls != "Rest":
                        shown.setdefault(cls, text)
                        if len(shown) == 2:
                            screenshot(patient, "patient_ramp")
        assert done["kind"] == "calibration_done" and done["purpose"] == "ramp", done
        assert done["model"] == model  # the map is kept
        assert shown, "no ramp step seen on the page"
        for cls, text in shown.items():  # the page shows the daemon's own instruction
            daemon_text = [t for c, t in instructions.items() if display(c) == cls]
            assert daemon_text and text == daemon_text[0], (cls, text, instructions)
            assert "ramp" in text.lower()
        expect(operator.locator("#c-progress")).to_have_text(
            f"Last calibration done: speed recalibrated from ramps (map {model} kept).")
        assert client.status()["model"] == model
    finally:
        patient.close()
