"""The run directory: an exclusive lock while a run uses it, atomic file writes, notices, test kill points.

The lock is an ``fcntl.flock`` on ``<run>/run.lock``. The kernel drops it when
the holding process exits, however it exits, so a killed run never leaves a
stale lock behind; the file itself only names the last holder's pid.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"

# Fault injection for the test suite: "<point>@<step>" kills this process with SIGKILL at that point.
_KILL_ENV = "_FLOWOPT_TEST_KILL_AT"


class RunDirectoryError(ValueError):
    """The run directory is in use, holds something else, is damaged, or cannot be written."""


def notice(message: str) -> None:
    """Tell the user, whether or not logging is configured to show INFO records."""
    if logger.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
        logger.info(message)
    else:
        print(f"flowopt: {message}", file=sys.stderr, flush=True)


def kill_point(point: str, step: int, before: Callable[[], object] | None = None) -> None:
    """Test hook: SIGKILL this process when ``$_FLOWOPT_TEST_KILL_AT`` is ``"<point>@<step>"``.

    ``before`` runs first (e.g. to leave a half-written line). A no-op unless the
    private variable is set.
    """
    if os.environ.get(_KILL_ENV) == f"{point}@{step}":
        if before is not None:
            before()
        _kill()


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: written to a temporary file, fsynced, checked, then renamed.

    Raises:
      RunDirectoryError: the write failed (the old file, if any, is unchanged).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if tmp.read_bytes() != data:
            raise OSError(errno.EIO, "the written file does not read back")
        os.replace(tmp, path)
    except OSError as error:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RunDirectoryError(f"Could not write {path}: {error.strerror or error}; it was left as it was.") from error
    fsync_dir(path.parent)


def make_run_dir(path: Path) -> None:
    """Create the run directory, or say clearly why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"Cannot create the output directory {path}: {error.strerror or error}.") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"The output directory {path} is not writable.")


class RunLock:
    """An exclusive, non-blocking lock on a run directory for the life of a run.

    Raises:
      RunDirectoryError: another live process holds the directory (its pid is named).
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / LOCK_NAME
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirectoryError(f"Cannot create the lock file {self.path}: {error.strerror or error}.") from error
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(self._fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryError(f"Cannot lock {self.path}: {error.strerror or error}.") from error
            raise RunDirectoryError(
                f"The output directory {Path(directory)} is in use by another run ({holder}); "
                "wait for it to finish or choose another output directory."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
