"""Atomic file writes: a temp file in the target folder, flushed, given the mode a plain ``open``
would have given (``0o666 & ~umask`` for a new file, the old file's mode for one replaced), then
renamed over the target. (``tempfile.mkstemp`` creates its file 0600 whatever the umask: left so,
a pruned.pt or model.onnx could not be read by anyone else.)"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tp_vgg.errors import UserError


def ensure_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {path!r}: {e.strerror}") from e
    return path


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux's
    /proc/self/status), else by setting a strict one (0o077) for an instant and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def plain_mode(path: str) -> int:
    """The permission bits ``open(path, "w")`` would leave ``path`` with: an existing regular
    file's own, else ``0o666 & ~umask``."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it gets the mode a plain ``open`` would have
    given (:func:`plain_mode`) and replaces ``path``; on failure it is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"cannot write {path!r}: {e.strerror}") from e
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, plain_mode(path))
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise UserError(f"cannot write {path!r}: {e.strerror or e}") from e
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_with(path: str, writer: Callable[[str], Any]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_with(path, w)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
