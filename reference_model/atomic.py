"""Files that are either absent or complete: written to a temporary file beside the target, then renamed.

The temporary file is `.<name>.<pid>.<random>.tmp`: a writer killed with SIGKILL leaves it behind, and the
pid in its name proves it stale once that process is gone (`remove_stale_temporaries`).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that dead writers of `path` left beside it; returns what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)(\.\w+)?\.tmp")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
        m = pattern.fullmatch(candidate.name)
        if m and not _pid_alive(int(m.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


class AtomicFile:
    """A binary file that appears at `path` only once complete: `with AtomicFile(path) as fh: fh.write(...)`.

    It is also where pytest-benchmark writes its JSON. pytest-benchmark < 5.3 writes through
    `with session.json as fh` (the context manager below renames on exit); 5.3+ calls
    `open(session.json, "wb")`, which reaches `__fspath__`: a temporary path that `commit()` renames at the
    end of the session.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.pending: str | None = None  # the temporary path handed out by __fspath__

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.pending = str(self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp"))
        return self.pending

    def commit(self) -> None:
        if self.pending and os.path.exists(self.pending):
            os.replace(self.pending, self.path)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode
        self.fh = os.fdopen(fd, "wb")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False
