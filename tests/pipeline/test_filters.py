"""StreamingFilter: chunked == whole-signal sosfilt, notch attenuation, edge clipping."""

import logging

import numpy as np
import pytest
from scipy import signal

from emtl_stream.pipeline.filters import StreamingFilter


def _random_chunks(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, 40), replace=False))
    return np.split(np.arange(n), cuts)


@pytest.mark.parametrize("fs,bandpass,notch", [(1000.0, (20.0, 450.0), 50.0),
                                               (200.0, (20.0, 450.0), 50.0),
                                               (2048.0, None, 60.0),
                                               (500.0, (10.0, 100.0), None)])
def test_chunked_equals_whole_signal_sosfilt(fs, bandpass, notch, rng):
    f = StreamingFilter(fs, 5, bandpass=bandpass, notch=notch, order=4)
    x = rng.normal(size=(3000, 5)) * 30
    # independent design of the same cascade
    sos = []
    if bandpass is not None:
        sos.append(signal.butter(4, [bandpass[0], min(bandpass[1], 0.45 * fs)], "bandpass",
                                 fs=fs, output="sos"))
    if notch is not None:
        sos.append(signal.tf2sos(*signal.iirnotch(notch, 30.0, fs=fs)))
    whole = signal.sosfilt(np.vstack(sos), x, axis=0)
    pieces = [f.process(x[idx]) for idx in _random_chunks(rng, len(x))]
    np.testing.assert_allclose(np.vstack(pieces), whole, rtol=0, atol=1e-12 * np.abs(whole).max())
    f.reset()
    np.testing.assert_allclose(f.process(x), whole, rtol=0, atol=1e-12 * np.abs(whole).max())


def test_notch_removes_50_hz_and_keeps_100_hz():
    fs = 1000.0
    t = np.arange(int(4 * fs)) / fs
    f = StreamingFilter(fs, 2, bandpass=None, notch=50.0)
    x = np.column_stack([np.sin(2 * np.pi * 50 * t), np.sin(2 * np.pi * 100 * t)])
    y = f.process(x)[int(2 * fs):]  # after the transient
    assert np.sqrt(np.mean(y[:, 0] ** 2)) < 0.01 * np.sqrt(0.5)
    assert np.sqrt(np.mean(y[:, 1] ** 2)) > 0.95 * np.sqrt(0.5)


def test_band_edge_above_nyquist_is_clipped_at_200_hz(caplog):
    with caplog.at_level(logging.INFO, logger="emtl_stream"):
        f = StreamingFilter(200.0, 8, bandpass=(20.0, 450.0), notch=50.0)
    assert f.band == (20.0, 90.0)
    assert "clipped" in caplog.text
    expected = signal.butter(4, [20.0, 90.0], "bandpass", fs=200.0, output="sos")
    np.testing.assert_array_equal(f.sos[:4], expected)


def test_impossible_band_and_notch_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="emtl_stream"):
        f = StreamingFilter(30.0, 2, bandpass=(20.0, 450.0), notch=50.0)
    assert f.band is None and f.notch is None and not f.active
    assert "band-pass (20.0, 450.0) Hz skipped" in caplog.text
    assert "notch at 50.0 Hz skipped" in caplog.text
    x = np.arange(10.0).reshape(5, 2)
    np.testing.assert_array_equal(f.process(x), x)


def test_nonfinite_rows_come_out_nan_and_do_not_poison_the_state(rng):
    f = StreamingFilter(1000.0, 3, bandpass=(20.0, 450.0), notch=50.0)
    x = rng.normal(size=(500, 3))
    x[100, 1] = np.nan
    x[101, 0] = np.inf
    y = f.process(x)
    assert np.isnan(y[[100, 101]]).all()
    assert np.isfinite(np.delete(y, [100, 101], axis=0)).all()
    # the filter saw zeros there: compare with an independent run on the repaired input
    z = x.copy()
    z[[100, 101]] = 0.0
    ref = signal.sosfilt(f.sos, z, axis=0)
    np.testing.assert_allclose(np.delete(y, [100, 101], 0), np.delete(ref, [100, 101], 0),
                               atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="low edge"):
        StreamingFilter(1000.0, 2, bandpass=(100.0, 50.0))
    with pytest.raises(ValueError, match="fs must be > 0"):
        StreamingFilter(0.0, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        StreamingFilter(1000.0, 2).process(np.ones((4, 3)))
