"""One run per workdir, and files that are either old or new, never half written.

`WorkdirLock` holds an exclusive `flock` on `<workdir>/.lock`: the kernel drops
it when the holder exits, however it exits (kill -9 included), so a stale lock
never needs cleaning up. The lock file records who holds it, for the message a
second run gets. On network file systems flock may be local to one host; the
record of the host in the message helps there.

The atomic writers write a temporary file beside the target, fsync it and
rename it over the target, so a crash or a full disk leaves the old file.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import tempfile
from typing import Any, Callable, IO

import numpy as np

from common.evaluation import to_jsonable

LOCK_NAME = ".lock"


class WorkdirBusyError(ValueError):
  """Another live process holds the workdir."""


def _check_dir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"workdir {workdir} is a file, not a directory")


class WorkdirLock:
  """Exclusive, non-blocking lock on a workdir (created if missing).

  Use as a context manager, or call `acquire()` / `release()`. In a
  multi-process run only process 0 should take it: the other processes share
  the workdir by design.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    """Takes the lock.

    Raises:
      ValueError: the workdir is a file.
      WorkdirBusyError: another process holds it (naming pid, host, start).
    """
    if self._fd is not None:
      return self
    _check_dir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirBusyError(
          f"workdir {self.workdir} is in use by pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it "
          "or use another workdir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Drops the lock (the file stays: deleting it would race a new holder)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_holder(fd: int) -> dict:
  # The holder may be between truncate and write: then its details are unknown.
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (ValueError, OSError):
    return {}


def current_umask() -> int:
  """The process's umask, read without changing it where /proc tells it."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)  # no /proc: set and restore
  os.umask(mask)
  return mask


def _atomic_write(path: str, mode: str, write: Callable[[IO], None]) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    # mkstemp creates 0600; the file gets the mode open() would give it.
    os.fchmod(fd, 0o666 & ~current_umask())
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  # Make the rename itself durable.
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def atomic_write_text(path: str, text: str) -> None:
  """Replaces `path` with `text` (UTF-8) atomically."""
  _atomic_write(path, "w", lambda f: f.write(text))


def atomic_write_json(path: str, obj: Any, *, indent: int | None = 2) -> None:
  """Replaces `path` with `obj` as JSON atomically; numpy values become plain
  numbers/lists and NaN/inf become null (strict JSON)."""
  text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
  atomic_write_text(path, text)


def atomic_savez(path: str, **arrays: Any) -> None:
  """Replaces `path` with an .npz of `arrays` atomically (no ".npz" is added)."""
  _atomic_write(path, "wb", lambda f: np.savez(f, **arrays))
