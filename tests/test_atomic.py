"""The one atomic-write module: a crash or a failing writer leaves the old file; model
loaders agree on one error that names the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from emtl_stream import _atomic
from emtl_stream.daemon.bundle import SourceBundle
from emtl_stream.errors import ModelError
from emtl_stream.model.gmm import LabelledGMM
from emtl_stream.model.lvq import GMLVQ
from emtl_stream.model.source import SourceComponents


def _gmm(seed: int, m: int = 120, K: int = 6) -> LabelledGMM:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, m))
    return LabelledGMM.from_params(rng.normal(size=(K, m)), A @ A.T / m + np.eye(m),
                                   np.full(K, 1.0 / K), np.arange(K) % 3, np.arange(3))


def _bundle(seed: int) -> SourceBundle:
    comp = _gmm(seed).to_components()
    return SourceBundle(components=comp, features={"kind": "test"}, window_ms=200.0,
                        step_ms=50.0, n_channels=8, fs=1000.0, meta={"seed": seed})


def test_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    _atomic.atomic_write_bytes(path, b"old")

    def half(fh):
        fh.write(b"new but torn")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _atomic.atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_every_model_save_fsyncs_file_and_folder(tmp_path, monkeypatch):
    """The model copies used to skip the folder fsync; now all go through _atomic."""
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd")
                      else None)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 3)), np.repeat(["a", "b"], 30)
    X[y == "b"] += 3
    savers = [lambda p: _gmm(0, m=4).save(p), lambda p: _bundle(0).save(p),
              lambda p: GMLVQ(max_iter=200).fit(X, y).save(p)]
    for i, save in enumerate(savers):
        synced.clear()
        save(tmp_path / f"m{i}.npz")
        assert synced[-2:] == [False, True] or synced[-2:] == [None, None], (i, synced)


@pytest.mark.parametrize("loader,what", [(LabelledGMM.load, "a LabelledGMM"),
                                         (GMLVQ.load, "a GMLVQ model"),
                                         (SourceBundle.load, "an emtl_stream source model")])
def test_model_loaders_agree_on_errors(tmp_path, loader, what):
    good = _bundle(0).save(tmp_path / "bundle.npz") if what.startswith("an") else \
        _gmm(0, m=4).save(tmp_path / "gmm.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    for bad in (truncated, garbage, foreign, tmp_path / "missing.npz"):
        with pytest.raises(ModelError) as info:
            loader(bad)
        assert str(info.value).startswith(f"cannot load {what} from {bad}: ")


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_atomic import _bundle, _gmm
    root = Path(sys.argv[1])
    models = [(_gmm(0), _bundle(0)), (_gmm(1), _bundle(1))]
    i = 0
    while True:
        gmm, bundle = models[i % 2]
        gmm.save(root / "gmm.npz")
        bundle.save(root / "bundle.npz")
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("delay_s", [0.0, 0.007, 0.019, 0.043])
def test_kill_9_mid_save_leaves_a_complete_model(tmp_path, delay_s):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path),
                             os.path.dirname(__file__)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            assert proc.stdout.readline(), "writer died"
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    want = [_gmm(0).means_, _gmm(1).means_]
    gmm = LabelledGMM.load(tmp_path / "gmm.npz")
    assert any(np.array_equal(gmm.means_, w) for w in want)
    bundle = SourceBundle.load(tmp_path / "bundle.npz")
    assert bundle.meta["seed"] in (0, 1)
    assert any(np.array_equal(bundle.components.means, w) for w in want)
