"""One daemon per state folder: an exclusive ``flock`` on ``<state dir>/daemon.lock``.

The lock file holds the owner's pid so a second daemon can say who has the folder.
The kernel releases a ``flock`` when its process dies, however it dies, so a stale
lock file (a crashed daemon's) never blocks a restart; the file itself is left in
place on release (removing it would race with a process about to lock it).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import ConfigError

LOCK_NAME = "daemon.lock"


class StateDirLocked(ConfigError):
    """Another live process holds the state folder; ``pid`` is its pid (or ``None``).

    Parameters
    ----------
    message : str
        What is locked and by whom.
    pid : int or None
        The holder's pid, when known.
    """

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class StateDirLock:
    """Exclusive, non-blocking lock on a state folder (created if missing).

    Parameters
    ----------
    state_dir : path-like

    Examples
    --------
    >>> with StateDirLock("state"):                      # doctest: +SKIP
    ...     serve()

    Raises
    ------
    StateDirLocked
        From :meth:`acquire` (and ``with``) when another process holds the lock; the
        message names the folder and that process's pid.
    """

    def __init__(self, state_dir: str | os.PathLike):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        """Take the lock and write this process's pid into the lock file; returns self."""
        if self._fd is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid is not None else "another process"
            raise StateDirLocked(
                f"state folder {self.state_dir} is in use by another daemon ({who}); stop it "
                "first or give this one its own folder ([state] dir, EMTL_STATE_DIR)", pid
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Only the holder writes: truncate and put our pid in for the next one to read.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> "StateDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
