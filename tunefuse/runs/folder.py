"""The run folder: what ``tunefuse fit`` writes, laid out so a person and a resumed fit can both read it.

    RUN/
      config.yaml            the resolved config (after --set), as run
      run.json               format, versions of tunefuse / torch / transformers / python, status, the data's digest
      .lock                  held (flock) by the fit writing the folder; a second fit is refused
      members/NAME/          one folder a member: model/ (safetensors + JSON, or skops for a scikit-learn baseline),
                             member.json (what was fitted: the done marker), state/ (training state while it trains)
      fusions/NAME/          model/ (the saved fusion) and fusion.json (the done marker)
      metrics.jsonl          one JSON record an event: epochs, members and fusions done, the evaluation
      leaderboard.csv        one row a model, best first, with standard errors and ECE
      predictions/NAME.jsonl test predictions of each model (see ``tunefuse.runs.predictions``)
      report.html            the self-contained report

Every file is written to a temp name and renamed; every folder through ``checkpoint.atomic_folder``. A file is
either absent or whole, so a fit killed at any moment leaves a folder the next fit resumes from.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from ..checkpoint import _jsonable
from .config import ConfigError

RUN_FORMAT = "tunefuse.run/1"
RUN_FORMATS_READ = (RUN_FORMAT,)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder, fsynced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable, allow_nan=True))


def versions() -> dict:
    import sklearn
    import torch
    import transformers

    from .. import __version__

    return {"tunefuse": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


class RunFolder:
    """Paths and small records of one run folder."""

    def __init__(self, path):
        self.path = Path(path)

    # layout
    def member(self, name: str) -> Path:
        return self.path / "members" / name

    def fusion(self, name: str) -> Path:
        return self.path / "fusions" / name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    # records
    def read_run(self) -> dict:
        """run.json of an existing run folder; a folder of another tool or version is a one-line error."""
        if not self.path.is_dir():
            raise ConfigError(f"run folder {str(self.path)!r} does not exist; fix: pass the output folder of a "
                              "`tunefuse fit`")
        if not self.run_file.is_file():
            raise ConfigError(f"{str(self.path)!r} is not a tunefuse run folder (no run.json); fix: pass the output "
                              "folder of a `tunefuse fit`")
        try:
            meta = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{str(self.run_file)!r} is damaged ({type(e).__name__}); fix: rerun `tunefuse fit` "
                              "into a new folder") from None
        if not isinstance(meta, dict) or meta.get("format") not in RUN_FORMATS_READ:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise ConfigError(f"{str(self.path)!r} was written as {got!r}, which this tunefuse "
                              f"({versions()['tunefuse']}) does not read (it reads {list(RUN_FORMATS_READ)}); fix: "
                              "refit it with this version, or use the version that wrote it")
        return meta

    def log(self, record: dict) -> None:
        """Append one event to metrics.jsonl (one line, flushed: a kill loses at most the line being written,
        and a torn last line is skipped by :meth:`events`)."""
        line = json.dumps({"time": round(time.time(), 3), **record}, default=_jsonable, allow_nan=True)
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def events(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        out = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed fit
        return out

    def clean_temp(self) -> None:
        """Repair what a killed fit left: an atomic folder swap interrupted between its two renames (the old copy is
        moved back when the new one is missing), then temp folders and files. Only inside the run's own layout."""
        roots = [self.path] + [self.path / d for d in ("members", "fusions", "state", "predictions")]
        places = [r for r in roots if r.is_dir()]
        places += [p for r in places[1:] for p in r.rglob("*") if p.is_dir() and not p.name.startswith(".")]
        for place in places:
            for old in place.glob(".*.old-*"):
                for inner in old.iterdir() if old.is_dir() else []:
                    if not (place / inner.name).exists():
                        os.replace(inner, place / inner.name)
        for place in places:
            for p in list(place.glob(".*.tmp-*")) + list(place.glob(".*.old-*")):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def resolve_inside(self, name: str, what: str = "model") -> Path:
        """``RUN/name`` for a name given on the command line, refused when it points outside the run folder."""
        target = (self.path / name).resolve()
        if not target.is_relative_to(self.path.resolve()):
            raise ConfigError(f"{what}={name!r} points outside the run folder {str(self.path)!r}; fix: name a model "
                              "of the run (see its leaderboard.csv)")
        return target

    def check_output(self) -> None:
        """A fit writes into a new folder, an empty one, or its own run folder: never into another folder."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output={str(self.path)!r} is a file; fix: set output to a folder path")
        if self.path.is_dir() and not self.run_file.exists() and any(
                p.name != ".lock" for p in self.path.iterdir()):
            raise ConfigError(f"output={str(self.path)!r} is an existing folder that is not a tunefuse run (no "
                              "run.json); fix: set output to a new folder, e.g. --set output=runs/my-run")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``RUN/.lock`` (an flock, released by the kernel when the process dies, kill -9 included)."""
        self.check_output()
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"run folder {str(self.path)!r} is being written by another `tunefuse fit` ({holder}); "
                              "fix: wait for it to end, or pass another output folder (--set output=...)") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}")
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
