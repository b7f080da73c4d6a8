"""Warm-up must work at every stream width the daemon supports, report compile against
cache-load time, leave nothing to compile while serving, and be able to clear the cache."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_source

from emtl_stream.daemon import warmup
from emtl_stream.daemon.warmup import warm_up

STAGES = ("import", "features", "classify_shared", "classify_full", "transfer_shared_dense",
          "transfer_shared_cg", "transfer_full_dense", "transfer_full_cg")


@pytest.mark.parametrize("n_channels,fs", [(8, 200.0), (64, 2000.0)])
def test_warm_up_runs_every_stage_at_any_width(n_channels, fs):
    # 64 channels once crashed: the warm-up solved the real 16384-unknown system densely.
    times = warm_up(n_channels, fs, transfer_kwargs={"structure": "channel", "reg": 0.1})
    # the structured map's M-step: dense up to 1500 free entries (8 x 8 x 4), CG above
    solver = "dense" if n_channels * n_channels * 4 <= 1500 else "cg"
    stages = [s for s in STAGES if not s.startswith("transfer")] + [
        f"transfer_{kind}_{solver}" for kind in ("shared", "full")] + ["parallel_compile"]
    assert sorted(k for k in times if k not in ("total", "compile", "cache_load")) == \
        sorted(stages)
    assert times["total"] == pytest.approx(sum(times[k] for k in stages), rel=0.5)
    assert times["compile"] + times["cache_load"] == pytest.approx(times["total"], rel=1e-9)
    assert 0.0 <= times["compile"] <= times["total"]


SERVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event
    from emtl_stream.config import load_config
    from emtl_stream.daemon.bundle import SourceBundle
    from emtl_stream.daemon.warmup import kernel_signatures, warm_up_for
    from emtl_stream.model.classify import MappedClassifier
    from emtl_stream.pipeline.features import FeaturePipeline

    bundle = SourceBundle.load(sys.argv[1])
    times = warm_up_for(load_config(None, env={}), bundle)
    before = kernel_signatures()
    # the daemon's per-window path: filter + features, classification, log-marginal
    pipe = FeaturePipeline(bundle.make_extractor(), bundle.window_ms, bundle.step_ms,
                           filter=bundle.make_filter(bundle.n_channels, bundle.fs,
                                                     fallback={"bandpass": [20.0, 200.0],
                                                               "notch": 50.0}))
    m = bundle.components.means.shape[1]
    clf = MappedClassifier(bundle.components, np.eye(m), np.zeros(m))
    rng = np.random.default_rng(0)
    n_windows = 0
    with event.install_recorder("numba:compile") as rec:
        for i in range(100):
            chunk = rng.normal(size=(25, bundle.n_channels))
            if i == 50:
                chunk[3] = np.nan  # a bad sample takes the skip path too
            for w in pipe.push(chunk, np.arange(25) / bundle.fs + i * 25 / bundle.fs):
                index, proba = clf.classify_one(w.x)
                clf.log_marginal(w.x[None])
                n_windows += 1
        clf.classify_one(np.full(m, 1e30))  # the out-of-range guard
    after = kernel_signatures()
    print(json.dumps({"windows": n_windows, "compiles": sum(1 for _, e in rec.buffer
                                                           if e.is_start),
                      "before": before, "after": after, "times": times}))
""")


def test_serving_compiles_nothing_after_warm_up(tmp_path):
    bundle, *_ = make_source()
    path = bundle.save(tmp_path / "model.npz")
    proc = subprocess.run([sys.executable, "-c", SERVE, str(path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["windows"] > 50
    assert out["compiles"] == 0
    assert out["before"] == out["after"]
    # only what this (tied) model uses was compiled: no per-component kernels
    assert bundle.components.shared_precision
    assert out["before"]["estep.classify_one_shared"] == 1
    assert out["before"]["estep.classify_one_full"] == 0
    assert out["before"]["mstep.pcg_sylvester"] == 0
    assert len(out["before"]) > 10 and out["before"]["estep.classify_one_shared"] == 1


def _last_json(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_clear_cache_compile_versus_cache_load(tmp_path, monkeypatch):
    """A private NUMBA_CACHE_DIR: the first (cleared, empty) warm-up compiles, the second
    only loads, and clear_cache empties exactly this package's files there."""
    cache = tmp_path / "cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cold = _last_json(subprocess.run([sys.executable, "-m", "emtl_stream", "warmup",
                                      "--clear-cache"], env=env, capture_output=True,
                                     text=True, timeout=900))
    assert cold[0] == "removed 0 cached kernel file(s)"
    cold = {k: float(v[:-1]) for k, v in (kv.split("=") for kv in cold[-1].split())}
    code = ("from emtl_stream.daemon.warmup import warm_up_for; import json; "
            "from emtl_stream.config import load_config; "
            "print(json.dumps(warm_up_for(load_config(None))))")  # what the command warms
    warm = json.loads(_last_json(subprocess.run([sys.executable, "-c", code], env=env,
                                                capture_output=True, text=True,
                                                timeout=900))[-1])
    assert cold["compile"] > 0.5 * cold["total"]  # an empty cache compiles everything
    assert warm["compile"] < 0.2 * cold["compile"]  # a full one only loads
    files = sorted(cache.rglob("*.nb[ic]"))
    assert files and {f.name.split(".")[0] for f in files} <= {"linalg", "features", "estep",
                                                               "mstep"}
    foreign = files[0].parent / "not_ours.f-1.py311.nbi"
    foreign.write_text("x")
    from numba.core import config as numba_config

    monkeypatch.setattr(numba_config, "CACHE_DIR", str(cache))
    assert warmup.cache_dirs() == [files[0].parent]  # only the folder numba reads
    removed = warmup.clear_cache()
    assert sorted(removed) == files
    assert foreign.exists() and not list(cache.rglob("*.nbc"))
