"""Files that are either absent or complete: written to a temporary file beside the target, then renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
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
