"""The state-folder lock: one holder at a time, the holder's pid named, freed on exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emtl_stream.errors import ConfigError
from emtl_stream.io.lock import StateDirLock, StateDirLocked


def test_a_second_lock_is_refused_naming_the_holder_and_freed_on_release(tmp_path):
    first = StateDirLock(tmp_path / "state").acquire()
    assert (tmp_path / "state" / "daemon.lock").read_text().strip() == str(os.getpid())
    with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}") as info:
        StateDirLock(tmp_path / "state").acquire()
    assert info.value.pid == os.getpid() and isinstance(info.value, ConfigError)  # exit 2
    first.release()
    first.release()  # idempotent
    with StateDirLock(tmp_path / "state") as again:
        assert again.held


def test_a_killed_holder_leaves_a_stale_file_that_does_not_block(tmp_path):
    code = (f"from emtl_stream.io.lock import StateDirLock\n"
            f"StateDirLock({str(tmp_path)!r}).acquire()\nimport os\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "daemon.lock").exists()  # the file stays, the flock is gone
    with StateDirLock(tmp_path) as lock:
        assert lock.held
