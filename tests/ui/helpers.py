"""Helpers of the ui tests: a plain HTTP client, an SSE reader, screenshots."""

from __future__ import annotations

import http.client
import io
import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

# Debian's chromium; EMTL_CHROMIUM points elsewhere (the test that a missing browser
# fails rather than skips uses it).
CHROMIUM = Path(os.environ.get("EMTL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def http_request(url: str, method: str = "GET", path: str = "/", body=None,
                 headers: dict | None = None, timeout: float = 10.0):
    """One request with the standard library; ``(status, headers, body bytes)``."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class SSEReader:
    """Reads ``/events`` with a plain HTTP client and parses the pushed parts."""

    def __init__(self, url: str, timeout: float = 10.0):
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self.conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        self.state: dict = {}

    def next_event(self) -> tuple[str | None, dict]:
        """The next SSE event as ``(event name, fields)``; merges ``parts`` into ``state``."""
        fields: dict = {}
        while True:
            line = self.resp.fp.readline()
            if not line:
                raise EOFError("the ui server closed the event stream")
            line = line.decode("utf-8").rstrip("\n")
            if line == "":
                if fields:
                    break
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = fields.get(key, "") + value.lstrip(" ")
        if fields.get("event") == "parts":
            self.state.update(json.loads(fields["data"]))
        return fields.get("event"), fields

    def until(self, pred, timeout_s: float):
        """Read until ``pred(state)`` holds; returns the state or fails the test."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.next_event()
            if pred(self.state):
                return self.state
        pytest.fail(f"the pushed state did not reach the condition within {timeout_s} s: "
                    f"{ {k: self.state.get(k) for k in ('link', 'status')} }")

    def close(self) -> None:
        self.conn.close()



def screenshot(page, name: str) -> None:
    """Save a PNG of the page as ``ui_NAME.png`` in ``$EMTL_SCREENSHOTS`` (if set).

    ``EMTL_SCREENSHOTS=docs`` refreshes the pictures of docs/ui.md (not ``EMTL_UI_...``:
    that prefix is the ``[ui]`` config section's); without it the
    picture is still taken (so a broken page fails the step) but not kept. The PNG is
    reduced to a 64-colour palette to keep the repository small.
    """
    png = page.screenshot(scale="css")
    target = os.environ.get("EMTL_SCREENSHOTS")
    if not target:
        return
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64)
    img.save(Path(target) / f"ui_{name}.png", optimize=True)
