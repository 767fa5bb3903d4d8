"""Atomic folder writes and JSON helpers shared by every saver: a crash never leaves a half-written checkpoint."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from . import faults


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` whole, on error it is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path={str(path)!r} is an existing file; fix: pass a folder path to save into")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the saved folder gets the usual permissions
    try:
        yield tmp
        faults.point("save")  # bench/resume.py kills here: the temp folder is written, the rename not done
        if path.exists():  # os.replace cannot overwrite a non-empty folder: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent)) / path.name
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old.parent, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path, what: str) -> dict:
    """Read a checkpoint's JSON file; a missing or damaged file is a one-line error naming the folder."""
    if not path.is_file():
        raise ValueError(f"{path.parent} is not a {what} folder: {path.name} is missing; fix: pass a folder "
                         f"written by its save()")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); the checkpoint is damaged: save it again") from e


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_jsonable))




def _jsonable(o):
    if isinstance(o, os.PathLike):  # a backbone given as a folder path
        return os.fspath(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

