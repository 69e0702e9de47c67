"""One launcher per data directory, for as long as its stack may use the directory's files.

A stack's broker and Redis write there tens of seconds before stack.json says the stack runs
(that file is written once every service has started), and a second launcher in that window
removed them (``--fresh``, which the demo always is) or started a second broker on the same files.
An exclusive ``flock`` closes the window: it is taken before anything is removed or started and the
kernel drops it with the process, so a launcher killed outright leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from streamloop.stack.exceptions import DataDirInUseError

# Never removed, not even by a fresh start: a launcher that removed it while another held it
# would lock a new file, and both would run.
LOCK_FILE = "stack.lock"


class DataDirLock:
    """The held lock; ``release`` (or the end of the process) lets the next launcher in."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the lock at once, or raise DataDirInUseError naming the process that holds it."""
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DataDirInUseError(
                f"{data_dir} is in use by another streamloop launcher ({holder}); stop it first "
                "(Ctrl-C where it runs) or use another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Only the holder writes, so a refused launcher reads whole pids (or nothing, in the instant
        # between flock and this write).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> str:
    written = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {written}" if written.isdigit() else "its pid not yet written"
