"""A minimal XDF writer: one numeric EMG stream and an optional string Markers stream.

Enough of the XDF 1.0 container (https://github.com/sccn/xdf/wiki/Specifications)
for LabRecorder-compatible readers such as pyxdf: the file header, one stream
header, sample chunk, two clock offsets (zero: the samples are already on the
recorder's clock) and a footer per stream. pyxdf has no writer, and this subset is
small enough to own.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from .recordings import Recording
from .._atomic import atomic_write

_FILE_HEADER, _STREAM_HEADER, _SAMPLES, _CLOCK_OFFSET, _STREAM_FOOTER = 1, 2, 3, 4, 6


def _varlen(n: int) -> bytes:
    """XDF variable-length integer: a byte saying how many bytes follow (1, 4 or 8)."""
    if n < 256:
        return b"\x01" + struct.pack("<B", n)
    if n < 2 ** 32:
        return b"\x04" + struct.pack("<I", n)
    return b"\x08" + struct.pack("<Q", n)


def _chunk(tag: int, content: bytes) -> bytes:
    return _varlen(len(content) + 2) + struct.pack("<H", tag) + content


def _stream_xml(name: str, stype: str, n_channels: int, srate: float, fmt: str,
                labels=None) -> bytes:
    chans = ""
    if labels:
        chans = "<desc><channels>" + "".join(
            f"<channel><label>{escape(str(c))}</label></channel>" for c in labels
        ) + "</channels></desc>"
    return (f'<?xml version="1.0"?><info><name>{escape(name)}</name><type>{stype}</type>'
            f"<channel_count>{n_channels}</channel_count><nominal_srate>{srate!r}"
            f"</nominal_srate><channel_format>{fmt}</channel_format>{chans}</info>").encode()


def _footer(stream_id: int, stamps) -> bytes:
    first, last = (float(stamps[0]), float(stamps[-1])) if len(stamps) else (0.0, 0.0)
    xml = (f'<?xml version="1.0"?><info><first_timestamp>{first!r}</first_timestamp>'
           f"<last_timestamp>{last!r}</last_timestamp><sample_count>{len(stamps)}"
           "</sample_count></info>")
    return _chunk(_STREAM_FOOTER, struct.pack("<I", stream_id) + xml.encode())


def _offsets(stream_id: int, stamps) -> bytes:
    t0, t1 = (float(stamps[0]), float(stamps[-1])) if len(stamps) else (0.0, 1.0)
    return b"".join(_chunk(_CLOCK_OFFSET, struct.pack("<Idd", stream_id, t, 0.0))
                    for t in (t0, max(t1, t0 + 1.0)))


def save_xdf(path, rec: Recording, stamps: np.ndarray, markers=(), *, stream_name: str = "EMG",
             markers_name: str = "") -> None:
    """Write ``rec`` (samples stamped ``stamps``) and ``markers`` as an XDF file, atomically.

    Parameters
    ----------
    path : path-like
    rec : Recording
        Its EMG (written as ``double64``) and channel names; labels are not written
        as such: readers rebuild them from the markers.
    stamps : ndarray of shape (n_samples,)
        LSL timestamp of every sample.
    markers : sequence of (str, float)
        Marker text and timestamp; written as a ``Markers`` stream when non-empty.
    stream_name, markers_name : str
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    if stamps.shape != (rec.n_samples,):
        raise ValueError(f"save_xdf: {stamps.shape} timestamps for {rec.n_samples} samples.")
    buf = io.BytesIO()
    buf.write(b"XDF:")
    buf.write(_chunk(_FILE_HEADER, b'<?xml version="1.0"?><info><version>1.0</version></info>'))
    buf.write(_chunk(_STREAM_HEADER, struct.pack("<I", 1) + _stream_xml(
        stream_name, "EMG", rec.n_channels, float(rec.fs), "double64", rec.channel_names)))
    markers = sorted(((str(m), float(t)) for m, t in markers), key=lambda m: m[1])
    if markers:
        buf.write(_chunk(_STREAM_HEADER, struct.pack("<I", 2) + _stream_xml(
            markers_name or f"{stream_name}-markers", "Markers", 1, 0.0, "string")))
    # One sample chunk: per sample a timestamp flag byte (8 = a double follows), the stamp
    # and the values, as a structured array written in one go.
    row = np.dtype([("n", "u1"), ("t", "<f8"), ("x", "<f8", (rec.n_channels,))])
    samples = np.empty(rec.n_samples, row)
    samples["n"], samples["t"], samples["x"] = 8, stamps, rec.emg
    buf.write(_chunk(_SAMPLES, struct.pack("<I", 1) + _varlen(rec.n_samples)
                     + samples.tobytes()))
    if markers:
        body = b"".join(b"\x08" + struct.pack("<d", t) + _varlen(len(m.encode()))
                        + m.encode() for m, t in markers)
        buf.write(_chunk(_SAMPLES, struct.pack("<I", 2) + _varlen(len(markers)) + body))
    buf.write(_offsets(1, stamps))
    if markers:
        buf.write(_offsets(2, [t for _, t in markers]))
    buf.write(_footer(1, stamps))
    if markers:
        buf.write(_footer(2, [t for _, t in markers]))
    atomic_write(Path(path), lambda fh: fh.write(buf.getbuffer()))
