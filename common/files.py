"""Files that are never torn: every checkpoint and results file of this project is written through atomic_write
(a temporary file beside the target, renamed over it), and training runs clear what killed writes left behind."""
from __future__ import annotations

import logging
import os
import re

import torch

__all__ = ["atomic_write", "remove_stale_temporaries", "save_atomic"]

logger = logging.getLogger(__name__)
_TEMPORARY = re.compile(r"^\..+\.tmp\.(\d+)$")  # atomic_write's temporary files: .NAME.tmp.PID


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp) with a temporary path beside `path`, then rename it over `path`: a crash or a full disk
    never leaves a torn file where a good one was expected (a kill leaves the temporary file, which
    remove_stale_temporaries deletes at the next start)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that killed atomic writes left in `folder` (`.NAME.tmp.PID` of a process that is
    gone; a live writer's file is kept) and logs them. Returns the removed paths. Training runs call this when
    they start."""
    if not os.path.isdir(folder):
        return []
    removed, size = [], 0
    for name in sorted(os.listdir(folder)):
        match = _TEMPORARY.match(name)
        if match and int(match.group(1)) != os.getpid() and not _process_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            size += os.path.getsize(path)
            os.remove(path)
            removed.append(path)
    if removed:
        logger.warning(f"removed {len(removed)} temporary file(s) of killed checkpoint writes ({size / 2**20:.1f} MiB) "
                       f"in {folder}: {', '.join(os.path.basename(p) for p in removed)}")
    return removed


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save(obj, path), atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
