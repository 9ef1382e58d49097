"""Files the service writes that hold what others on the host must not read: created mode 0600.

The SQLite store (audit records with customer emails, token hashes, sealed keys), audit exports and
recorded conversations. ``open()`` would create them under the process umask (0644 on most hosts:
readable by every local user); here the mode is given at creation, and an existing file is narrowed to
0600 before anything is written into it. (The master key and the checkpoint signing key are created the
same way by their own modules; signed checkpoints are public by design and stay 0644.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TextIO

MODE = 0o600


def open_private(path: Path, *, encoding: str = "utf-8") -> TextIO:
    """``path`` opened for writing (truncated), mode 0600 whether it is new or not."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), MODE)
    try:
        os.fchmod(fd, MODE)
        return os.fdopen(fd, "w", encoding=encoding)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; whether it was created (SQLite then opens it,
    and its ``-wal`` and ``-shm`` files take the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


__all__ = ["MODE", "create_private", "open_private", "readable_by_others"]
