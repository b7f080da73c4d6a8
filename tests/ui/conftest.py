"""Fixtures for the ui tests: a real daemon, a synthetic armband, the ui server, chromium.

The daemon fixtures come from ``tests/daemon/conftest.py`` (one daemon per test, its
own LSL source id, loopback ports and state directory). The browser is Debian's
``/usr/bin/chromium`` driven by Playwright; Playwright's own browser download is not
used. If chromium or Playwright is missing the browser tests fail with the command
that installs them (``.ci/run`` runs it); they are never skipped.
"""

from __future__ import annotations

import pytest
from daemon.conftest import (  # noqa: F401 - fixtures re-exported for the ui tests
    Live,
    daemon_config,
    free_port,
    live,
    source,
    start_daemon,
    start_player,
    wait_event,
    wait_for,
)

from ui.helpers import CHROMIUM, CHROMIUM_ARGS

from emtl_stream.ui.server import UiServer


@pytest.fixture
def start_ui():
    """Factory: a :class:`UiServer` on a free loopback port; all are stopped at teardown."""
    servers = []

    def start(control: str, pub: str, address: str = "127.0.0.1:0", **kw) -> UiServer:
        ui = UiServer(control, pub, address, **kw).start()
        servers.append(ui)
        return ui

    yield start
    for ui in servers:
        ui.stop()


@pytest.fixture
def ui(live, start_ui) -> UiServer:
    """The ui server of the ``live`` daemon."""
    return start_ui(live.control, live.pub, feature_names=live.config.features.names)


# --------------------------------------------------------------------------- browser
@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian chromium under Playwright, with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the ui browser tests need Debian's chromium "
                    "(apt-get update && apt-get install -y chromium; .ci/run does this)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed ({exc}); pip install -e '.[dev]'")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900})
        yield context
        context.close()


@pytest.fixture
def page(browser):
    """A new tab; closed at teardown. Default timeout 20 s (the CI machine is shared)."""
    pg = browser.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    pg.close()
