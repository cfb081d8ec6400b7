"""No silent hang on a stale DeepSpeed build lock.

DeepSpeed JIT-compiles its CPU ops (the shared-memory communication op at ``init_distributed``,
CPU Adam under offload) with torch's ``cpp_extension``, which guards each build folder with a
"baton": a ``lock`` file created exclusively and deleted when the build ends. A build killed
half-way leaves the file behind, and from then on every run waits for it forever at 0% CPU with
no message (DeepSpeedExamples issue 302 is users meeting exactly this).

The builder keeps the lock file open while it builds, so a lock that no process has open is
stale. :func:`recover_stale_build_locks` runs before DeepSpeed starts: under an OS lock (``flock``,
so the ranks of one machine take turns), every ``lock`` in the extensions folder that no live
process holds open is removed, with a note; one a live process holds is left to finish. Without
``/proc`` (not Linux) holders cannot be seen: a lock older than :data:`STALE_AFTER_S` is reported
with its path and the remedy instead of being waited on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STALE_AFTER_S = 1800  # without /proc: a build lock this old is reported


class StaleBuildLockError(RuntimeError):
    """A build lock that looks abandoned and cannot be checked for a live holder here."""


def extensions_root() -> Path:
    """Where torch (and so DeepSpeed) builds its JIT extensions."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """The baton files under ``root`` (``<op>/lock`` and ``<pyXY_cpu>/<op>/lock``)."""
    if not root.is_dir():
        return []
    return sorted(p for pattern in ("*/lock", "*/*/lock") for p in root.glob(pattern))


def holders(path: Path) -> list[int] | None:
    """The pids with ``path`` open (Linux ``/proc``), or None where that cannot be seen."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(path)
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    pids.append(int(entry.name))
                    break
            except OSError:
                continue
    return pids


@contextlib.contextmanager
def _os_lock(root: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``root/.simple-rlhf-build-locks`` (released if we die)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".simple-rlhf-build-locks", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recover_stale_build_locks(root: Path | None = None) -> list[Path]:
    """Remove the build locks under ``root`` (default :func:`extensions_root`) that no process
    holds; returns them. Raises :class:`StaleBuildLockError` for an old lock whose holder cannot
    be checked."""
    root = root if root is not None else extensions_root()
    if not build_locks(root):
        return []
    removed = []
    with _os_lock(root):
        for lock in build_locks(root):
            pids = holders(lock)
            if pids:  # a live build: torch waits for it, as it should
                print(f"note: waiting for a build by pid {pids[0]} ({lock})", file=sys.stderr)
                continue
            if pids is None:
                age = time.time() - lock.stat().st_mtime
                if age > STALE_AFTER_S:
                    raise StaleBuildLockError(
                        f"{lock}: a DeepSpeed/torch extension build lock {age / 60:.0f} minutes "
                        "old; a build interrupted then leaves it behind and every later run waits "
                        "for it forever. If no build is running, delete that file and run again."
                    )
                continue
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            removed.append(lock)
            print(
                f"note: removed a stale build lock left by an interrupted build: {lock}",
                file=sys.stderr,
            )
    return removed
