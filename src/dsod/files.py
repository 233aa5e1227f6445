"""Files that are never half-written: every output goes to a temporary file in the same folder and
is renamed into place (``os.replace`` is atomic on POSIX and Windows), so Ctrl-C, ``kill`` or a full
disk leaves either the previous file or the new one."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, List, Union

from .errors import DsodError

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` (same suffix, so writers that pick a format from the
    name keep working); on a clean exit it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        why = _no_room(e, tmp)
        if tmp.exists():
            tmp.unlink()
        if why:
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            raise OutOfSpace(f"{why} while writing {path}; {kept}") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


class OutOfSpace(DsodError, OSError):
    """A write that a full disk (or a file-size limit) stopped; the previous file is untouched."""


def _no_room(e: BaseException, tmp: Path) -> str:
    """Why a write failed for lack of room ("" if not): ENOSPC / EDQUOT / EFBIG, or torch.save's
    RuntimeError (``inline_container.cc``, which drops the errno) where the disk is now (nearly) full
    or the file reached the process's file-size limit (``ulimit -f``)."""
    if isinstance(e, OSError):
        if e.errno == errno.EFBIG:
            return "the file-size limit (ulimit -f) was reached"
        return f"no space left on {_mount_point(tmp.parent)}" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    text = str(e)
    if "inline_container" not in text and "PytorchStreamWriter" not in text:
        return ""
    try:
        if shutil.disk_usage(tmp.parent).free < 64 << 20:
            return f"no space left on {_mount_point(tmp.parent)}"
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and tmp.exists() and tmp.stat().st_size >= limit - (1 << 16):
            return "the file-size limit (ulimit -f) was reached"
    except (OSError, ImportError):
        pass
    return ""


def _mount_point(folder: Path) -> str:
    """The mount point holding ``folder`` (what a user frees space on)."""
    p = folder.resolve()
    try:
        dev = p.stat().st_dev
        while p.parent != p and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    return str(p)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_bytes(data)
    return Path(path)


class FolderBusy(DsodError):
    """A results folder another live dsod process writes to (one line, naming its PID)."""


class FolderLock:
    """An OS lock on a results folder, held while this process writes there: a second writer is
    refused instead of interleaving results.csv and replacing best.pt. The lock (``flock`` on
    ``.dsod.lock``, ``msvcrt.locking`` on Windows) belongs to the open file, so the OS releases it
    when the process ends, however it ends: a killed run never leaves the folder locked."""

    NAME = ".dsod.lock"

    def __init__(self, folder: PathLike, what: str = "run"):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / self.NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(self.fd)
        except OSError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise FolderBusy(f"{folder} is in use by another dsod {what} (PID {holder}); give another name= "
                             f"or wait for it to end") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the lock
            self.fd = None


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files ``atomic_path`` left in ``folder`` when a process was killed inside a
    write (call it only while holding the folder's ``FolderLock``: no live writer owns them)."""
    gone = []
    for p in Path(folder).glob(".*.tmp*"):
        if p.is_file() and ".tmp" in p.name:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone
