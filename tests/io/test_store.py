"""State store: round trips, versions, no pickle, and atomicity under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from emtl_stream.io.store import StateStore, atomic_write_npz, load_npz


def test_map_round_trip_and_metadata(tmp_path, rng):
    store = StateStore(tmp_path / "state")
    H, b = rng.normal(size=(6, 4)), rng.normal(size=6)
    v1 = store.save_map(H, b, {"burst": 3, "objective": -12.5, "parent": None, "n_iter": 7})
    v2 = store.save_map(np.eye(6), None, {"parent": v1})
    assert (v1, v2) == (1, 2)
    H1, b1, meta1 = store.load_map(v1)
    np.testing.assert_array_equal(H1, H)
    np.testing.assert_array_equal(b1, b)
    assert meta1["version"] == 1 and meta1["burst"] == 3 and meta1["objective"] == -12.5
    assert meta1["n_iter"] == 7 and meta1["bias"] is True and meta1["shape"] == [6, 4]
    H2, b2, meta2 = store.load_map(v2)
    np.testing.assert_array_equal(b2, np.zeros(6))
    assert meta2["parent"] == 1 and meta2["burst"] is None and meta2["bias"] is False
    assert [m["version"] for m in store.list_maps()] == [1, 2]
    # the files are plain npz + json
    assert json.loads((tmp_path / "state/maps/H_1.json").read_text())["version"] == 1
    with np.load(tmp_path / "state/maps/H_1.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["H", "b"]


def test_live_pointer(tmp_path):
    store = StateStore(tmp_path)
    assert store.live_version() is None
    v = store.save_map(np.eye(2))
    store.set_live(v)
    assert StateStore(tmp_path).live_version() == v  # survives reopening
    with pytest.raises(FileNotFoundError, match="map 9"):
        store.set_live(9)
    store.set_live(None)
    assert store.live_version() is None
    # a pointer to a vanished map is ignored, not trusted
    store.set_live(v)
    (tmp_path / "maps" / f"H_{v}.json").unlink()
    assert store.live_version() is None


def test_bad_maps_are_refused_before_anything_is_written(tmp_path):
    store = StateStore(tmp_path)
    with pytest.raises(ValueError, match="finite 2-D"):
        store.save_map(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="length 2"):
        store.save_map(np.eye(2), np.zeros(3))
    with pytest.raises(ValueError, match="JSON with finite numbers"):
        store.save_map(np.eye(2), None, {"objective": float("-inf")})
    assert list((tmp_path / "maps").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="map version 4 does not exist"):
        store.load_map(4)


def test_burst_round_trip(tmp_path, rng):
    store = StateStore(tmp_path)
    arrays = {"X": rng.normal(size=(10, 8)), "labels": np.asarray(["fist"] * 5 + ["rest"] * 5),
              "timestamps": np.arange(10.0), "raw": rng.normal(size=(10, 40, 2)).astype(np.float32)}
    bid = store.save_burst(arrays, {"purpose": "recalibrate", "model": 1})
    assert bid == 1 and store.save_burst({"X": np.zeros((1, 1))}) == 2
    back, meta = store.load_burst(bid)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype
    assert meta["purpose"] == "recalibrate" and meta["shapes"]["raw"] == [10, 40, 2]
    assert [m["id"] for m in store.list_bursts()] == [1, 2]
    with pytest.raises(TypeError, match="dtype object"):
        store.save_burst({"labels": np.asarray(["a", None], dtype=object)})
    with pytest.raises(ValueError, match="identifier"):
        store.save_burst({"bad name": np.zeros(2)})
    with pytest.raises(FileNotFoundError, match="burst 7"):
        store.load_burst(7)


class _FakeBundle:
    def __init__(self, payload):
        self.payload = payload

    def save(self, path):
        atomic_write_npz(path, {"w": self.payload})


def test_source_model_from_bundle_path_or_arrays(tmp_path):
    store = StateStore(tmp_path / "s")
    assert store.source_path() is None
    p = store.save_source(_FakeBundle(np.arange(3.0)))
    assert store.source_path() == p
    np.testing.assert_array_equal(load_npz(p)["w"], np.arange(3.0))
    other = tmp_path / "model.npz"
    np.savez(other, w=np.ones(2))
    store.save_source(other)
    np.testing.assert_array_equal(load_npz(store.source_path())["w"], np.ones(2))
    store.save_source({"w": np.zeros(4)})
    np.testing.assert_array_equal(load_npz(store.source_path())["w"], np.zeros(4))
    with pytest.raises(FileNotFoundError):
        store.save_source(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="source must be"):
        store.save_source(42)


def test_object_arrays_in_a_file_are_not_unpickled(tmp_path):
    store = StateStore(tmp_path)
    v = store.save_map(np.eye(2))
    # an attacker swaps in an npz whose array needs pickle: loading refuses it
    np.savez(tmp_path / "maps" / f"H_{v}.npz", H=np.array([{"x": 1}], dtype=object), b=np.zeros(2))
    with pytest.raises(ValueError, match="pickle"):
        store.load_map(v)


def test_half_written_files_are_ignored_and_cleaned(tmp_path):
    store = StateStore(tmp_path)
    v = store.save_map(np.eye(3))
    # an interrupted write: a temp file, and an npz whose json marker never came
    (tmp_path / "maps" / ".H_2.npz.abcd.tmp").write_bytes(b"PK\x03\x04 truncated")
    np.savez(tmp_path / "maps" / "H_2.npz", H=np.eye(3), b=np.zeros(3))
    (tmp_path / ".live.json.xyz.tmp").write_text('{"vers')
    assert [m["version"] for m in store.list_maps()] == [v]
    reopened = StateStore(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))
    assert reopened.save_map(np.eye(3)) == 3  # the orphan's number is not reused


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from emtl_stream.io.store import StateStore
    store = StateStore(sys.argv[1])
    rng = np.random.default_rng(0)
    i = 0
    while True:
        i += 1
        v = store.save_map(rng.normal(size=(160, 160)), rng.normal(size=160),
                           {"burst": i, "objective": float(i), "parent": i - 1})
        store.set_live(v)
        store.save_burst({"X": rng.normal(size=(300, 64)),
                          "labels": np.asarray(["a", "b"] * 150)}, {"i": i})
        print(v, flush=True)
""")


@pytest.mark.parametrize("delay_s", [0.0, 0.013, 0.031])
def test_kill_9_mid_write_leaves_only_complete_files(tmp_path, delay_s):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(state)],
                            stdout=subprocess.PIPE, text=True)
    try:
        # wait for a few complete rounds, then kill at an arbitrary point of a write
        for _ in range(3):
            line = proc.stdout.readline()
            assert line, "writer died"
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # every file that has its final name is complete and loadable
    for path in state.rglob("*"):
        if path.is_dir() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".npz":
            arrays = load_npz(path)
            assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
        elif path.suffix == ".json":
            json.loads(path.read_text())
    store = StateStore(state)
    maps = store.list_maps()
    assert len(maps) >= 3
    for m in maps:
        H, b, meta = store.load_map(m["version"])
        assert H.shape == (160, 160) and b.shape == (160,) and meta["burst"] == m["version"]
    live = store.live_version()
    assert live is not None and live >= 3
    H, _, _ = store.load_map(live)
    assert np.all(np.isfinite(H))
    for meta in store.list_bursts():
        arrays, _ = store.load_burst(meta["id"])
        assert arrays["X"].shape == (300, 64)
    assert not list(state.rglob("*.tmp"))  # reopening cleaned up
    assert store.save_map(np.eye(2)) > max(m["version"] for m in maps)


def test_announced_map_version_is_the_one_saved(tmp_path):
    store = StateStore(tmp_path)
    assert store.next_map_version() == 1
    assert store.save_map(np.eye(2), version=1) == 1
    assert store.next_map_version() == 2
    with pytest.raises(ValueError, match="no longer free"):
        store.save_map(np.eye(2), version=1)
    assert [m["version"] for m in store.list_maps()] == [1]
