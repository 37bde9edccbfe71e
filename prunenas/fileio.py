"""Crash-safe file writing: temp file in the same folder, fsync, rename. Readers never see half a file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prunenas.errors import PrunenasError


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(path: str | os.PathLike, what: str, error: type[PrunenasError] = PrunenasError) -> str:
    """The UTF-8 text of the file ``path``; a missing, unreadable, binary or folder ``path`` raises ``error``
    with one line naming ``what`` (e.g. ``"architecture file"``) — never a traceback."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise error(f"cannot read {what} {path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                    f"{err.start})") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write through a temp file in the same folder and rename, so readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` through a temp file and rename; the file appears complete and with its final permissions
    at once: ``mode``, by default those of any new file (0666 minus the umask) — not the temp file's 0600, so
    run folders on shared storage stay readable as usual."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _default_mode() -> int:
    """0666 minus the process umask, read without changing it (Linux ``/proc``; umask 022 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block; released when the
    block ends or the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
