"""Named fault-injection points, so tests and ``bench/resume.py`` can kill a fit at an exact moment.

``TUNEFUSE_FAULT="save:3"`` kills the process (SIGKILL, as ``kill -9`` would) the 3rd time it reaches the point
named ``save``; ``arm("step", 5, RuntimeError)`` raises in-process instead (unit tests). Unarmed points cost one
dictionary look-up. Points: ``step`` (after a training step and its checkpoint), ``save`` (inside an atomic write,
before the rename), ``member`` (after a member is written to a run folder), ``fusion`` (inside a fusion's fit).
``TUNEFUSE_FAULT_ONCE=PATH`` beside it fires only in the first process to get there (it creates PATH first): a
retried Ray task, which inherits the same environment, then runs through.
"""
from __future__ import annotations

import os
import signal

_armed: dict[str, list] = {}  # point -> [hits left, action]
_env_read = False


def arm(name: str, count: int, action=None) -> None:
    """Fire at the ``count``-th arrival at point ``name``: raise ``action`` (an exception class) or SIGKILL."""
    _armed[name] = [int(count), action]


def disarm() -> None:
    _armed.clear()


def point(name: str) -> None:
    global _env_read
    if not _env_read:
        _env_read = True
        spec = os.environ.get("TUNEFUSE_FAULT", "")
        once = os.environ.get("TUNEFUSE_FAULT_ONCE")
        if once and os.path.exists(once):
            spec = ""  # fired already, in an earlier process
        if ":" in spec:
            where, count = spec.rsplit(":", 1)
            _armed.setdefault(where, [int(count), None])
    entry = _armed.get(name)
    if entry is None:
        return
    entry[0] -= 1
    if entry[0] > 0:
        return
    del _armed[name]
    once = os.environ.get("TUNEFUSE_FAULT_ONCE")
    if once and entry[1] is None:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # atomic: one process of many fires
        except FileExistsError:
            return
    if entry[1] is not None:
        raise entry[1](f"fault injected at {name!r}")
    os.kill(os.getpid(), signal.SIGKILL)
