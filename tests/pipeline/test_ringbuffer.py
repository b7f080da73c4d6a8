"""RingBuffer against a plain concatenated array."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emtl_stream.pipeline.ringbuffer import RingBuffer


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 50), n_channels=st.integers(1, 4),
       chunks=st.lists(st.integers(0, 120), min_size=1, max_size=25), seed=st.integers(0, 2**31))
def test_reads_by_counter_equal_the_concatenated_stream(capacity, n_channels, chunks, seed):
    rng = np.random.default_rng(seed)
    rb = RingBuffer(capacity, n_channels)
    full = np.zeros((0, n_channels))
    full_ts = np.zeros(0)
    for n in chunks:
        x = rng.normal(size=(n, n_channels))
        t = len(full_ts) + np.arange(n) + 0.5
        rb.write(x, t)
        full = np.vstack([full, x])
        full_ts = np.concatenate([full_ts, t])
        assert rb.n_written == len(full)
        lo = max(0, len(full) - capacity)
        for _ in range(3):
            a = int(rng.integers(lo, len(full) + 1))
            b = int(rng.integers(a, len(full) + 1))
            data, ts = rb.read(a, b)
            np.testing.assert_array_equal(data, full[a:b])
            np.testing.assert_array_equal(ts, full_ts[a:b])
        if lo > 0:
            with pytest.raises(ValueError, match="overwritten"):
                rb.read(lo - 1, len(full))
        with pytest.raises(ValueError, match="not written yet"):
            rb.read(lo, len(full) + 1)


def test_wraparound_and_oversized_write_keep_the_newest():
    rb = RingBuffer(5, 1)
    rb.write(np.arange(3.0)[:, None], np.arange(3.0))
    rb.write(np.arange(3.0, 7.0)[:, None], np.arange(3.0, 7.0))  # wraps
    np.testing.assert_array_equal(rb.read(2, 7)[0].ravel(), [2, 3, 4, 5, 6])
    rb.write(np.arange(7.0, 19.0)[:, None], np.arange(7.0, 19.0))  # larger than capacity
    assert rb.n_written == 19 and rb.oldest == 14
    data, ts = rb.read(14, 19)
    np.testing.assert_array_equal(data.ravel(), [14, 15, 16, 17, 18])
    np.testing.assert_array_equal(ts, [14, 15, 16, 17, 18])
    # read returns a copy: later writes do not change it
    rb.write(np.full((5, 1), -1.0), np.zeros(5))
    np.testing.assert_array_equal(data.ravel(), [14, 15, 16, 17, 18])


def test_buffers_are_preallocated_and_reused():
    rb = RingBuffer(8, 2)
    data_id, ts_id = id(rb.data), id(rb.timestamps)
    for _ in range(10):
        rb.write(np.ones((5, 2)), np.ones(5))
    assert id(rb.data) == data_id and id(rb.timestamps) == ts_id


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        RingBuffer(0, 2)
    rb = RingBuffer(4, 2)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        rb.write(np.ones((3, 3)), np.ones(3))
    with pytest.raises(ValueError, match="timestamps must have shape"):
        rb.write(np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="reversed"):
        rb.read(2, 1)
