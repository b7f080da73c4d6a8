"""EMGInlet against real LSL outlets on loopback (uuid source_ids, counter channel 0)."""

import threading
import time

import numpy as np
import pylsl
import pytest
from lsl_helpers import pull_until, unique_id

from emtl_stream.errors import ChannelMismatch, StreamNotFound
from emtl_stream.io.lsl_inlet import EMGInlet, build_query
from emtl_stream.io.lsl_outlet import EMGOutlet, MarkerOutlet


class CounterSource:
    """Pushes ``n_total`` samples whose channel 0 is the sample number, paced at
    ``fs`` by the sample clock, starting once a consumer is connected."""

    def __init__(self, outlet: EMGOutlet, fs: float, n_total: int, start: int = 0,
                 chunk: int = 10, wait_s: float = 10.0):
        self.outlet, self.fs, self.n_total, self.start, self.chunk = outlet, fs, n_total, start, chunk
        self.wait_s = wait_s
        self.rng = np.random.default_rng(start)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        if not self.outlet.wait_for_consumers(self.wait_s):
            return
        t0 = pylsl.local_clock()
        i = 0
        while i < self.n_total:
            due = t0 + (i + self.chunk) / self.fs
            now = pylsl.local_clock()
            if now < due:
                time.sleep(due - now)
            n = min(self.chunk, self.n_total - i)
            block = self.rng.standard_normal((n, self.outlet.n_channels)).astype(np.float32)
            block[:, 0] = np.arange(self.start + i, self.start + i + n)
            self.outlet.push(block, t0 + (self.start + i + n - 1) / self.fs)
            i += n


def test_counter_stream_arrives_in_order_without_loss_into_preallocated_buffers():
    sid = unique_id()
    fs, n_ch, n_total, cap = 1000.0, 16, 3000, 7
    outlet = EMGOutlet("cnt", n_ch, fs, sid, channel_labels=["counter"] + [f"c{i}" for i in
                                                                            range(1, n_ch)])
    inlet = EMGInlet(source_id=sid, resolve_timeout=5.0, expected_channels=n_ch,
                     expected_rate=fs, chunk_cap=cap)
    desc = inlet.connect()
    assert (desc.n_channels, desc.rate, desc.channel_format, desc.source_id) == (
        n_ch, fs, "float32", sid)
    assert desc.channel_labels[:2] == ("counter", "c1") and desc.type == "EMG"
    CounterSource(outlet, fs, n_total)
    s, _ = pull_until_first(inlet)
    data, stamps, sizes = pull_until(inlet, n_total - len(s), timeout_s=15.0)
    counter = np.r_[s[:, 0], data[:, 0]]
    np.testing.assert_array_equal(counter, np.arange(n_total))
    assert max(sizes) <= cap
    assert data.dtype == np.float64 and data.shape[1] == n_ch
    # timestamps: local clock, one sample period apart (the outlet stamped them so)
    np.testing.assert_allclose(np.diff(stamps), 1.0 / fs, atol=1e-6)
    assert inlet.n_gaps == 0 and inlet.n_lost_samples == 0
    assert inlet.n_samples == n_total and inlet.connected
    inlet.close()


def pull_until_first(inlet, timeout_s=10.0):
    """First non-empty pull; checks that two pulls share one preallocated buffer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s, t = inlet.pull(timeout=0.05)
        if len(t):
            kept = s.copy(), t.copy()
            s2, _ = inlet.pull(timeout=1.0)
            # every pull is a view into the same buffer, allocated once
            assert np.shares_memory(s, s2) or len(s2) == 0
            assert s.base is not None
            if len(s2):
                return np.r_[kept[0], s2.copy()], None
            return kept
    pytest.fail("no samples within the timeout")


def test_mismatches_and_not_found_name_what_was_looked_for():
    sid = unique_id()
    outlet = EMGOutlet("mm", 8, 1000.0, sid)  # noqa: F841 (kept alive)
    with pytest.raises(ChannelMismatch, match="has 8 channels but the model expects 16"):
        EMGInlet(source_id=sid, expected_channels=16).connect()
    with pytest.raises(ChannelMismatch, match="runs at 1000 Hz but the model expects 200 Hz"):
        EMGInlet(source_id=sid, expected_rate=200.0).connect()
    msid = unique_id()
    markers = MarkerOutlet("mk", msid)  # noqa: F841
    with pytest.raises(ChannelMismatch, match="carries string values"):
        EMGInlet(stype="Markers", source_id=msid).connect()
    missing = unique_id("absent")
    with pytest.raises(StreamNotFound, match=rf"name='nobody', type='EMG', source_id='{missing}'.*0.3 s"):
        EMGInlet(name="nobody", source_id=missing, resolve_timeout=0.3).connect()
    with pytest.raises(ValueError, match="at least one of name, stype or source_id"):
        EMGInlet(stype=None)


def test_query_quoting():
    assert build_query("a", "EMG", None) == "name='a' and type='EMG'"
    assert build_query("it's", None, None) == "name=\"it's\""
    with pytest.raises(ValueError, match="both quote characters"):
        build_query("'\"", None, None)


def test_lost_stream_is_detected_and_a_restarted_source_is_reconnected():
    sid = unique_id()
    fs = 500.0
    inlet = EMGInlet(source_id=sid, resolve_timeout=5.0, lost_after_s=0.3)
    outlet = EMGOutlet("lost", 4, fs, sid)
    src = CounterSource(outlet, fs, 250)
    inlet.connect()
    data, _, _ = pull_until(inlet, 250, timeout_s=10.0)
    np.testing.assert_array_equal(data[:, 0], np.arange(250))
    src.thread.join(5.0)
    outlet.close()
    del outlet, src
    deadline = time.monotonic() + 10.0
    while inlet.connected and time.monotonic() < deadline:
        inlet.pull(timeout=0.05)
    assert not inlet.connected, "the silent stream was not declared lost"
    inlet.gap_pending = False
    # the device comes back under the same source_id and carries on counting
    outlet2 = EMGOutlet("lost", 4, fs, sid)
    CounterSource(outlet2, fs, 250, start=250, wait_s=15.0)
    data2, _, _ = pull_until(inlet, 250, timeout_s=20.0)
    assert inlet.connected and inlet.n_reconnects == 1
    np.testing.assert_array_equal(data2[:, 0], np.arange(250, 500))
    assert inlet.gap_pending  # the caller must restart its windows
    inlet.close()


def test_gaps_are_counted_across_and_within_chunks():
    sid = unique_id()
    fs = 100.0
    outlet = EMGOutlet("gap", 2, fs, sid)
    inlet = EMGInlet(source_id=sid, resolve_timeout=5.0)
    inlet.connect()
    assert outlet.wait_for_consumers(5.0)
    t0 = pylsl.local_clock()
    x = np.zeros((100, 2), np.float32)
    x[:, 0] = np.arange(100)
    outlet.push(x[:50], t0 + 49 / fs)
    outlet.push(x[55:], t0 + 99 / fs)  # samples 50-54 never sent
    data, stamps, _ = pull_until(inlet, 95, timeout_s=10.0)
    assert len(data) == 95
    assert inlet.n_gaps == 1 and inlet.n_lost_samples == 5 and inlet.gap_pending
    inlet.close()

    # within one chunk, with per-sample timestamps (raw pylsl outlet)
    sid2 = unique_id()
    info = pylsl.StreamInfo("gap2", "EMG", 1, fs, pylsl.cf_float32, sid2)
    raw = pylsl.StreamOutlet(info)
    inlet2 = EMGInlet(source_id=sid2, resolve_timeout=5.0)
    inlet2.connect()
    assert raw.wait_for_consumers(5.0)
    idx = np.r_[0:10, 13:20, 30:40]  # two gaps: 3 and 10 samples missing
    raw.push_chunk(idx.astype(np.float32)[:, None], list(t0 + idx / fs))
    data, _, _ = pull_until(inlet2, len(idx), timeout_s=10.0)
    np.testing.assert_array_equal(data[:, 0], idx)
    assert inlet2.n_gaps == 2 and inlet2.n_lost_samples == 3 + 10
    inlet2.close()


def test_a_replacement_source_with_a_new_source_id_is_found_by_resolving_again():
    # query by name only: liblsl cannot recover a different source_id, the
    # inlet's own re-resolution (same query) must find the new outlet
    name = unique_id("byname")
    fs = 500.0
    inlet = EMGInlet(name=name, resolve_timeout=5.0, lost_after_s=0.3)
    outlet = EMGOutlet(name, 3, fs, unique_id())
    src = CounterSource(outlet, fs, 100)
    inlet.connect()
    pull_until(inlet, 100, timeout_s=10.0)
    src.thread.join(5.0)
    outlet.close()
    del outlet, src
    deadline = time.monotonic() + 10.0
    while inlet.connected and time.monotonic() < deadline:
        inlet.pull(timeout=0.05)
    assert not inlet.connected
    outlet2 = EMGOutlet(name, 3, fs, unique_id())
    CounterSource(outlet2, fs, 100, start=100, wait_s=15.0)
    data, _, _ = pull_until(inlet, 100, timeout_s=20.0)
    np.testing.assert_array_equal(data[:, 0], np.arange(100, 200))
    assert inlet.connected and inlet.n_reconnects == 1
    inlet.close()


def test_a_pull_with_min_samples_waits_for_that_many_across_chunks():
    # The source sends 2-sample chunks; one pull asking for 12 returns only when all
    # 12 are there (or the timeout ends), so the caller wakes once, not six times.
    sid = unique_id()
    fs, n_ch = 200.0, 4
    outlet = EMGOutlet("minsamp", n_ch, fs, sid)
    inlet = EMGInlet(source_id=sid, resolve_timeout=5.0, expected_channels=n_ch,
                     expected_rate=fs)
    inlet.connect()
    CounterSource(outlet, fs, 400, chunk=2)
    s, _ = pull_until_first(inlet)
    got = list(s[:, 0])
    for _ in range(5):
        s, _ = inlet.pull(timeout=2.0, min_samples=12)
        assert len(s) >= 12  # 60 ms of signal, well within the timeout
        got += list(s[:, 0])
    np.testing.assert_array_equal(got, np.arange(len(got)))
    # without a timeout min_samples does not wait
    t0 = time.monotonic()
    inlet.pull(timeout=0.0, min_samples=1000)
    assert time.monotonic() - t0 < 1.0
    inlet.close()
