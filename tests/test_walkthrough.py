"""The README's ``## Walk-through`` block, run verbatim with bash, so it cannot rot.

The block reads its stream name, ports and work folder from environment variables
with defaults; the test overrides them with unique values (another run or another
user's stream on this machine cannot interfere) and checks that the block's
background jobs are gone when it ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from daemon.conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def walkthrough_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Walk-through\n", 1)
    assert len(section) == 2, "README.md has no '## Walk-through' section"
    body = section[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.S)
    assert len(blocks) == 1, f"expected one ```sh block in the walk-through, got {len(blocks)}"
    return blocks[0]


def test_the_walkthrough_has_one_sh_block_that_pins_everything():
    block = walkthrough_block()
    for var in ("STREAM", "PUB", "CONTROL", "WORK"):
        assert re.search(rf"^{var}=\${{{var}:-", block, re.M), f"{var} is not overridable"
    assert "EMTL_STREAM_NAME" in block  # the daemon is pinned to the replayed stream
    assert "trap" in block and "EXIT" in block  # background jobs are cleaned up


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    block = walkthrough_block()
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "emtl-stream").exists(), f"emtl-stream is not installed in {bin_dir}"
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        STREAM=f"emtl-walk-{uuid.uuid4().hex[:10]}",
        PUB=f"tcp://127.0.0.1:{free_port()}",
        CONTROL=f"tcp://127.0.0.1:{free_port()}",
        WORK=str(tmp_path / "walk"),
    )
    for name in list(env):  # the block sets what it needs; nothing inherited may steer it
        if name.startswith("EMTL_") and name not in ("EMTL_EMG_DATA", "EMTL_LOG_LEVEL"):
            del env[name]
    proc = subprocess.Popen(["bash", "-c", block], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        try:  # anything the block left running is a failure below; stop it here
            os.killpg(proc.pid, 0)
            leftover = True
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            leftover = False
    assert proc.returncode == 0, f"walk-through failed ({proc.returncode}):\n{out}\n{err}"
    assert not leftover, "the walk-through left background processes running"
    assert "Traceback" not in err, err
    assert re.search(r"wrote .*armband\.npz: \d+ samples x 8 ch @ 1000 Hz", out), out
    assert "classes ['close', 'ext', 'flex', 'open', 'rest']" in out, out
    assert "emtl-stream run: serving on" in err and "connected: 8 ch @ 1000 Hz" in err, err
    assert re.search(r"new map live: version 2, roll \d+, objective .*, fit .* ms", err), err
    assert "state streaming  model 2" in out, out
    assert "map 1 live (was 2)" in out, out
    # progress without a terminal: one plain line per prompt, not one per prompt message
    prompt_lines = re.findall(r"^\[ ?\d+/(\d+)\] ", err, re.M)
    assert prompt_lines and len(prompt_lines) == int(prompt_lines[0]), err
    # liblsl's own log stays quiet without --verbose
    assert "Loaded default config" not in err and "transmission broke off" not in err, err
