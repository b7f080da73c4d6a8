"""Helpers for tests with real LSL streams on loopback (no fixtures, no mocks).

Importing this module asks liblsl to keep discovery on the local link
(``ResolveScope = link``) -- effective only if liblsl has not been used yet in
the process, which is why it happens at import time.
"""

from __future__ import annotations

import struct
import time
import uuid
import xml.etree.ElementTree as ET

import numpy as np
import pylsl

pylsl.set_config_content("[multicast]\nResolveScope = link\n")


def unique_id(prefix: str = "test") -> str:
    """A source_id no other test (or helper running in parallel) uses."""
    return f"{prefix}-{uuid.uuid4().hex}"


def pull_until(inlet, n_samples: int, timeout_s: float, max_chunk_seen=None):
    """Pull from an :class:`EMGInlet` until ``n_samples`` arrived or the timeout.

    Returns (samples, timestamps, chunk sizes) as copies.
    """
    got, stamps, sizes = [], [], []
    deadline = time.monotonic() + timeout_s
    total = 0
    while total < n_samples and time.monotonic() < deadline:
        s, t = inlet.pull(timeout=0.05)
        if len(t):
            got.append(s.copy())
            stamps.append(t.copy())
            sizes.append(len(t))
            total += len(t)
    if not got:
        return np.empty((0, 0)), np.empty(0), []
    return np.concatenate(got), np.concatenate(stamps), sizes


# ---------------------------------------------------------------------- XDF writer
# XDF (https://github.com/sccn/xdf/wiki/Specifications): "XDF:" then chunks of
# [NumLengthBytes][Length][Tag uint16][content]; tags 1 FileHeader, 2 StreamHeader,
# 3 Samples, 4 ClockOffset, 6 StreamFooter. Written from the spec for the tests.
def _varlen(n: int) -> bytes:
    if n < 256:
        return struct.pack("<BB", 1, n)
    if n < 2**32:
        return struct.pack("<BI", 4, n)
    return struct.pack("<BQ", 8, n)


def _chunk(tag: int, content: bytes) -> bytes:
    return _varlen(len(content) + 2) + struct.pack("<H", tag) + content


def _stream_header_xml(name, stype, n_ch, srate, fmt, labels=None) -> bytes:
    info = ET.Element("info")
    for k, v in (("name", name), ("type", stype), ("channel_count", str(n_ch)),
                 ("nominal_srate", repr(float(srate))), ("channel_format", fmt),
                 ("source_id", unique_id("xdf")), ("created_at", "0")):
        ET.SubElement(info, k).text = v
    desc = ET.SubElement(info, "desc")
    if labels:
        chans = ET.SubElement(desc, "channels")
        for lab in labels:
            ch = ET.SubElement(chans, "channel")
            ET.SubElement(ch, "label").text = lab
    return b'<?xml version="1.0"?>' + ET.tostring(info)


def write_xdf(path, emg: np.ndarray, fs: float, t0: float = 100.0, markers=None,
              channel_labels=None, marker_stream=True):
    """Write a minimal XDF file: one float32 EMG stream and optionally a marker stream.

    Parameters
    ----------
    emg : ndarray of shape (n, n_channels)
    markers : list of (timestamp, str), optional
    Returns the per-sample timestamps written.
    """
    emg = np.asarray(emg, dtype=np.float32)
    n, n_ch = emg.shape
    stamps = t0 + np.arange(n) / fs
    out = bytearray(b"XDF:")
    out += _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')
    out += _chunk(2, struct.pack("<I", 1) + _stream_header_xml("emg", "EMG", n_ch, fs, "float32",
                                                               channel_labels))
    if markers is not None and marker_stream:
        out += _chunk(2, struct.pack("<I", 2) + _stream_header_xml("mk", "Markers", 1, 0.0,
                                                                   "string"))
    for a in range(0, n, 100):  # several sample chunks, each sample time-stamped
        b = min(n, a + 100)
        body = bytearray(struct.pack("<I", 1)) + _varlen(b - a)
        for i in range(a, b):
            body += struct.pack("<Bd", 8, stamps[i]) + emg[i].tobytes()
        out += _chunk(3, bytes(body))
    if markers is not None and marker_stream:
        body = bytearray(struct.pack("<I", 2)) + _varlen(len(markers))
        for t, label in markers:
            raw = label.encode()
            body += struct.pack("<Bd", 8, t) + _varlen(len(raw)) + raw
        out += _chunk(3, bytes(body))
    for sid in ([1, 2] if markers is not None and marker_stream else [1]):
        out += _chunk(4, struct.pack("<Idd", sid, t0, 0.0))
        out += _chunk(4, struct.pack("<Idd", sid, t0 + n / fs, 0.0))
    with open(path, "wb") as fh:
        fh.write(bytes(out))
    return stamps


class ClockedOutlet:
    """A hand-made LSL outlet pushing on a continuous sample clock with explicit stamps.

    A slow iteration pushes a bigger chunk, never a timestamp gap (which would restart
    the daemon's windowing), so a consumer sees one continuous stream.
    """

    def __init__(self, source_id: str, n_channels: int, fs: float):
        self.fs = float(fs)
        self.outlet = pylsl.StreamOutlet(pylsl.StreamInfo("emtl-test", "EMG", n_channels, fs,
                                                          "float32", source_id))
        self.base, self.sent = None, 0

    def stream(self, arm, cls, seconds, sub, edit=None) -> list:
        """Push ``seconds`` of ``cls`` (``edit(block)`` may spoil it); messages received."""
        if self.base is None:
            self.base = pylsl.local_clock()
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            due = int((pylsl.local_clock() - self.base) * self.fs) - self.sent
            if due > 0:
                block = arm.generate(due, cls).astype(np.float32)
                if edit is not None:
                    edit(block)
                self.outlet.push_chunk(block.tolist(),
                                       list(self.base + (self.sent + np.arange(due)) / self.fs))
                self.sent += due
            got = sub.recv(timeout_s=0.01)
            while got is not None:
                seen.append(got)
                got = sub.recv(timeout_s=0)
        return seen
