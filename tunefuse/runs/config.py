"""The experiment config: one YAML file, validated by pydantic, that ``tunefuse fit`` runs.

    task: text-classification          # a registered task (``tunefuse list tasks``)
    data: {train: reviews}             # a named dataset or files, with a column mapping
    members:                           # what to fine-tune; ``grid`` expands one entry into several members
      - {name: lpft, backbone: minilm-l6, strategy: lp-ft, params: {epochs: 2}, grid: {random_state: [0, 1]}}
    fusions: [{method: stacking}, {method: greedy_soup}]
    seed: 0
    output: runs/reviews

Every error is one line naming the key, the value, the valid choices and the closest match (``ConfigError``).
``config_schema()`` is the JSON schema editors read (``tunefuse schema``, ``examples/tunefuse.schema.json``).
"""
from __future__ import annotations

import difflib
import inspect
import re
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Members that are not fine-tunes: classical baselines a fusion can stack with the networks.
CLASSICAL = {"tfidf-logreg": "text-classification", "ctr-lr": "ctr", "ctr-hgb": "ctr"}
FORMATS = ("auto", "csv", "tsv", "jsonl", "parquet", "conll", "squad", "image-folder", "image-csv", "coco")
SELECTIONS = ("standard-error", "validation")
# Finetuner parameters a config does not set per member: the run folder decides them
RUN_OWNED = ("backbone", "strategy", "task", "checkpoint_dir", "checkpoint_every_s", "verbose")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")


class ConfigError(ValueError):
    """A bad config: one line with the key, the value, the valid choices and the fix."""


def closest(value: Any, choices) -> str:
    """' (did you mean X?)' for the closest of ``choices``, or ''."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _choice(key: str, value: Any, choices, fix: str = "") -> ConfigError:
    return ConfigError(f"{key}={value!r} is not valid; valid: {sorted(map(str, choices))}{closest(value, choices)}"
                       + (f"; fix: {fix}" if fix else ""))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the examples are. ``train`` is a named dataset (``tunefuse list datasets``) or a file/folder; without
    ``validation``, ``validation_fraction`` of the training rows are held out (stratified for classifiers); without
    ``test``, the leaderboard has validation scores only (a named dataset brings its own test rows)."""

    train: str = Field(description="a named dataset (reviews, wnut16, wnut16-qa, mnist-5k, movielens-100k) or a path")
    validation: str | None = Field(None, description="a file/folder in the train format; None: split off train")
    test: str | None = Field(None, description="a file/folder in the train format; None: the dataset's own or none")
    format: Literal[FORMATS] = Field("auto", description="file format; auto: from the suffix (a folder: image-folder)")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="role -> column name, e.g. {text: 'Review Text', label: Rating}")
    label_threshold: float | None = Field(None, description="numeric labels >= this become 1, others 0 "
                                                            "(e.g. 4 for 'Rating >= 4'); None: labels as they are")
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    limit: int | None = Field(None, ge=2, description="use the first N training rows (smoke runs)")
    validation_limit: int | None = Field(None, ge=1, description="use the first N validation rows")
    test_limit: int | None = Field(None, ge=1, description="use the first N test rows")
    options: dict[str, Any] = Field(default_factory=dict, description="options of a named dataset, e.g. n_train")


class MemberConfig(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                             description="folder-safe name; default: backbone-strategy")
    backbone: str = Field("minilm-l6", description="a registered backbone, a local folder, a hub id, 'scratch' "
                                                   "(CTR) or a classical baseline: " + ", ".join(CLASSICAL))
    strategy: str = "full"
    params: dict[str, Any] = Field(default_factory=dict, description="Finetuner parameters, e.g. {epochs: 2}")
    grid: dict[str, list] = Field(default_factory=dict,
                                  description="parameter -> values: one member for each combination")


class FusionConfig(_Strict):
    method: str = Field(description="a fusion method (tunefuse list fusions)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
    members: list[str] | None = Field(None, description="member names; None: every member the method can take")
    params: dict[str, Any] = Field(default_factory=dict)


RANK_BY = ("logme", "probe_acc", "probe_log_loss")


class AutoConfig(_Strict):
    """The ``auto`` preset: rank the candidate backbones on the training rows (``tunefuse rank``), fine-tune the best
    ``top_k`` whose estimated fit time fits ``budget_s``, fuse them with the config's other members, and record why
    each candidate was chosen or not (RUN/auto.json, RUN/ranking.csv, the report)."""

    candidates: list[str] | None = Field(None, description="backbones to rank; None: every registered backbone of "
                                                           "the task's inputs that is installed")
    top_k: int = Field(2, ge=1, description="at most this many candidates are fine-tuned")
    budget_s: float = Field(1800.0, gt=0, description="seconds of fine-tuning the chosen candidates may take, by "
                                                      "the estimate from their ranking's forward passes")
    strategy: str = Field("lp-ft", description="how each chosen candidate is fine-tuned")
    params: dict[str, Any] = Field(default_factory=dict, description="Finetuner parameters, e.g. {epochs: 2}")
    max_rows: int = Field(2000, ge=20, description="training rows the ranking scores on (a stratified subsample)")
    rank_by: Literal[RANK_BY] = Field("logme", description="the ranking score: LogME, or the cross-validated "
                                                           "linear probe's accuracy or log-loss")


EXECUTORS = ("local", "ray")
PRUNERS = ("median", "asha", "none")
SAMPLERS = ("tpe", "random", "grid")


class ExecutorConfig(_Strict):
    """Where members and trials are fitted: ``local`` (this process, one after another) or ``ray`` (one Ray task
    each, with its CPU/GPU request; a killed worker's task is retried and resumes from the member's training state
    in the run folder, which every node must see: a shared path)."""

    kind: Literal[EXECUTORS] = Field("local", description="local: in this process; ray: one Ray task per member")
    address: str | None = Field(None, description="Ray cluster: None starts a local one; 'auto' joins the running "
                                                  "cluster of this machine; 'ray://host:10001' a remote one")
    cpus_per_member: float = Field(1.0, gt=0, description="CPUs a member's task requests; its torch threads too")
    gpus_per_member: float = Field(0.0, ge=0, description="GPUs a member's task requests (fractions share a GPU)")
    retries: int = Field(2, ge=0, description="times a member whose worker died is started again (resuming)")


class SearchConfig(_Strict):
    """A hyperparameter search (Optuna) whose finished trials become members named ``NAME-000``, ``NAME-001``...:
    soup ingredients and ensemble members like the listed ones (``fusions: [{method: greedy_soup, members:
    [NAME]}]`` names them all). The study lives in ``storage`` (default: SQLite in the run folder), so a killed
    search resumes: finished trials are kept, a trial cut short is run again with its parameters."""

    name: str = Field("trial", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$",
                      description="the trials' member-name prefix, and the group name fusions may list")
    backbone: str = "minilm-l6"
    strategy: str = "lp-ft"
    params: dict[str, Any] = Field(default_factory=dict, description="fixed Finetuner parameters of every trial")
    space: dict[str, Any] = Field(description="parameter -> [choices] or {low, high, log?, step?}")
    n_trials: int = Field(8, ge=1, description="finished trials (complete or pruned) the search runs")
    pruner: Literal[PRUNERS] = Field("median", description="stop trials whose validation score per epoch falls "
                                                           "behind: median (Optuna's MedianPruner), asha "
                                                           "(SuccessiveHalvingPruner) or none")
    sampler: Literal[SAMPLERS] = Field("tpe", description="tpe, random, or grid (every combination of choices)")
    storage: str | None = Field(None, description="an Optuna storage URL; None: sqlite:///RUN/search.db")


class Config(_Strict):
    task: str = "text-classification"
    task_options: dict[str, Any] = Field(default_factory=dict,
                                         description="options of the task entry, e.g. CTR's column mapping")
    data: DataConfig
    members: list[MemberConfig] = Field(default_factory=list)
    auto: AutoConfig | None = Field(None, description="rank candidate backbones and fine-tune the best within a "
                                                      "time budget (members then are optional)")
    fusions: list[FusionConfig] = Field(default_factory=list)
    selection: Literal[SELECTIONS] = Field("standard-error", description="how the model to ship is picked: the "
                                           "validation score less one standard error, or the raw score")
    seed: int = 0
    output: str = Field("runs/experiment", description="the run folder")
    checkpoint_every_s: float = Field(300.0, ge=0, description="seconds between training-state saves in a member")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    search: SearchConfig | None = Field(None, description="a hyperparameter search whose trials become members")

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        from ..tasks import ALIASES, TASKS

        if v not in TASKS and v not in ALIASES:
            raise _choice("task", v, list(TASKS) + list(ALIASES))
        return ALIASES.get(v, v)

    @model_validator(mode="after")
    def _members_and_fusions(self) -> "Config":
        from ..fusion import FUSION_METHODS

        if not self.members and self.auto is None and self.search is None:
            raise ConfigError("members: none given; fix: list at least one member (backbone, strategy), add "
                              "auto: {top_k: 2, budget_s: 1800} to rank backbones and fine-tune the best, or a "
                              "search: block whose trials become members")
        names = [m.name for m in self.expanded_members()]
        for n in names:
            if not NAME.match(n) or ".." in n:
                raise ConfigError(f"members: the expanded name {n!r} is not folder-safe (letters, digits, _ . = -); "
                                  "fix: set name:, or grid over values without '/' or spaces")
        trials = [t.name for t in self.trial_members()]
        dupes = sorted({n for n in names + trials if (names + trials).count(n) > 1})
        if dupes:
            raise ConfigError(f"members: the name(s) {dupes} occur more than once (a listed member and a search "
                              "trial count alike); fix: give each member its own name, or a grid that tells them "
                              "apart")
        groups = [self.search.name] if self.search is not None else []
        if set(groups) & set(names):
            raise ConfigError(f"search.name={groups[0]!r} is also a member's name; fix: name the search apart")
        fusion_names = []
        for i, f in enumerate(self.fusions):
            if f.method not in FUSION_METHODS:
                raise _choice(f"fusions[{i}].method", f.method, FUSION_METHODS)
            for m in f.members or []:
                if m not in names + trials + groups:
                    raise _choice(f"fusions[{i}].members", m, names + groups, "name members of this config, or "
                                  "the search's name for all its trials")
            chosen = self.fusion_members(f)
            if FUSION_METHODS[f.method].kind == "weight":  # merges weights: needs fine-tuned members
                pool = [m.backbone for m in self.expanded_members() + self.trial_members()
                        if m.backbone not in CLASSICAL and (chosen is None or m.name in chosen)]
                need = 1 if f.method == "wise_ft" else 2
                per_backbone = max((pool.count(b) for b in set(pool)), default=0)
                if chosen is not None and len(set(pool)) > 1:
                    raise ConfigError(f"fusions[{i}].members mixes backbones {sorted(set(pool))}; {f.method} merges "
                                      "weights of one backbone's fine-tunes; fix: list members of one backbone")
                if per_backbone < need:
                    raise ConfigError(f"fusions[{i}].method={f.method!r} merges the weights of {need}+ fine-tuned "
                                      f"members of one backbone; this config gives it {per_backbone}; fix: add members "
                                      "(e.g. grid: {random_state: [0, 1]}) or use an output fusion such as stacking")
            fusion_names.append(f.name or f.method)
        clash = sorted(set(fusion_names) & set(names + trials + groups) |
                       {n for n in fusion_names if fusion_names.count(n) > 1})
        if clash:
            raise ConfigError(f"fusions: the name(s) {clash} are used twice (by a member or another fusion); fix: "
                              "set name: on the fusions")
        if self.search is not None:
            _check_search(self.task, self.search)
        for i, m in enumerate(self.members):
            _check_member(self.task, m, f"members[{i}]")
        if self.auto is not None:
            from ..selection.ranking import PER_EXAMPLE

            if self.task not in PER_EXAMPLE:
                raise ConfigError(f"auto: ranking backbones needs one feature vector per example, which task="
                                  f"{self.task!r} has not; it applies to {', '.join(PER_EXAMPLE)}; fix: list "
                                  "members, or rank on a classification task of the same inputs")
            for j, c in enumerate(self.auto.candidates or []):
                if not isinstance(c, str) or not c.strip():
                    raise ConfigError(f"auto.candidates[{j}]={c!r} is empty; fix: a backbone name, e.g. minilm-l6")
            probe = (self.auto.candidates or [None])[0]
            _check_member(self.task, MemberConfig(backbone=probe or _default_backbone(self.task),
                                                  strategy=self.auto.strategy, params=self.auto.params), "auto")
        return self

    def expanded_members(self) -> list[MemberConfig]:
        """Each entry with its grid expanded: one member per combination, named ``name-key=value-...``."""
        out = []
        for m in self.members:
            base = m.name or f"{Path(m.backbone).name}-{m.strategy}"
            keys = list(m.grid)
            for combo in itertools.product(*(m.grid[k] for k in keys)) if keys else [()]:
                suffix = "-".join(f"{k}={v}" for k, v in zip(keys, combo))
                out.append(m.model_copy(update={"name": f"{base}-{suffix}" if suffix else base,
                                                "params": {**m.params, **dict(zip(keys, combo))}, "grid": {}}))
        return out

    def fusion_name(self, f: FusionConfig) -> str:
        return f.name or f.method

    def trial_members(self) -> list[MemberConfig]:
        """The search's trials as members (name, backbone, strategy, fixed params; the searched ones are chosen by
        the study): ``NAME-000`` ... ``NAME-{n_trials-1}``. A pruned trial is no member; see runs.search."""
        s = self.search
        if s is None:
            return []
        return [MemberConfig(name=f"{s.name}-{i:03d}", backbone=s.backbone, strategy=s.strategy, params=s.params)
                for i in range(s.n_trials)]

    def fusion_members(self, f: FusionConfig) -> list[str] | None:
        """A fusion's member names with the search's name expanded into its trials; None: every member."""
        if not f.members:  # None or []: every member, as before the search existed
            return None
        out = []
        for n in f.members:
            out += [t.name for t in self.trial_members()] if self.search and n == self.search.name else [n]
        return list(dict.fromkeys(out))


def _default_backbone(task: str) -> str:
    return {"image-classification": "mobilenet-v2", "ctr": "scratch"}.get(task, "minilm-l6")


def _check_member(task: str, m: MemberConfig, key: str) -> None:
    """Backbone, strategy and every parameter of one member entry, checked by building (not fitting) it."""
    from ..backbones import BACKBONES
    from ..finetuner import Finetuner
    from ..strategies import STRATEGIES

    if m.backbone in CLASSICAL:
        if CLASSICAL[m.backbone] != task:
            raise ConfigError(f"{key}.backbone={m.backbone!r} is a {CLASSICAL[m.backbone]} baseline, not one for "
                              f"task={task!r}; fix: use a backbone, or one of "
                              f"{[k for k, t in CLASSICAL.items() if t == task]}")
        extra = sorted(set(m.params) | set(m.grid))
        if extra:
            raise ConfigError(f"{key}: the baseline {m.backbone!r} takes no params, got {extra}; fix: remove them")
        return
    known = m.backbone in BACKBONES or m.backbone == "scratch" or Path(m.backbone).exists() or (
        m.backbone.count("/") == 1 and not m.backbone.startswith((".", "/")))  # a hub id: org/name
    if not known:
        raise _choice(f"{key}.backbone", m.backbone, list(BACKBONES) + list(CLASSICAL),
                      "a registered name, an existing folder or a hub id 'org/name'")
    if m.strategy not in STRATEGIES:
        raise _choice(f"{key}.strategy", m.strategy, STRATEGIES)
    valid = [p for p in inspect.signature(Finetuner).parameters if p not in RUN_OWNED]
    for where, keys in (("params", m.params), ("grid", m.grid)):
        for k in keys:
            if k not in valid:
                raise ConfigError(f"{key}.{where}: unknown parameter {k!r}{closest(k, valid)}; valid: {valid}; fix: "
                                  "use a Finetuner parameter (help(tunefuse.Finetuner) says what each does)")
    for k, values in m.grid.items():
        if not values:
            raise ConfigError(f"{key}.grid.{k}=[] has no values; fix: list at least one, e.g. [0, 1]")
    for combo in itertools.product(*m.grid.values()) if m.grid else [()]:
        params = {**m.params, **dict(zip(m.grid, combo))}
        try:
            Finetuner(m.backbone, m.strategy, task=task, **params)._check_params()
        except ValueError as e:
            named = str(e).split("=", 1)[0] in params
            raise ConfigError(f"{key}.params.{e}" if named else f"{key}: {e}") from None


def _check_search(task: str, s: SearchConfig) -> None:
    """The search block: a searchable space of Finetuner parameters, and a trial built (not fitted) with its first
    choices, so a bad backbone or parameter fails before the first trial."""
    from ..finetuner import Finetuner

    valid = [p for p in inspect.signature(Finetuner).parameters if p not in RUN_OWNED]
    if not s.space:
        raise ConfigError("search.space is empty; fix: e.g. space: {lr: {low: 1e-5, high: 1e-4, log: "
                          "true}, random_state: [0, 1, 2]}")
    first = {}
    for k, v in s.space.items():
        if k not in valid:
            raise ConfigError(f"search.space: unknown parameter {k!r}{closest(k, valid)}; valid: {valid}")
        if k in s.params:
            raise ConfigError(f"search.space.{k} is also in search.params; fix: keep it in one of them")
        if isinstance(v, list):
            if not v:
                raise ConfigError(f"search.space.{k}=[] has no choices; fix: list at least one")
            first[k] = v[0]
        elif isinstance(v, dict):
            extra = sorted(set(v) - {"low", "high", "log", "step"})
            if extra or not {"low", "high"} <= set(v):
                raise ConfigError(f"search.space.{k}={v!r}: a range has keys low, high and optionally log, step; "
                                  f"fix: e.g. {{low: 1e-5, high: 1e-4, log: true}}")
            try:
                low, high = float(v["low"]), float(v["high"])
            except (TypeError, ValueError):
                raise ConfigError(f"search.space.{k}: low and high must be numbers, got {v!r}") from None
            if not low < high or (v.get("log") and low <= 0):
                raise ConfigError(f"search.space.{k}={v!r}: need low < high (and low > 0 with log: true)")
            if s.sampler == "grid":
                raise ConfigError(f"search.space.{k} is a range, and sampler=grid needs lists of choices; fix: list "
                                  "the values, or use sampler: tpe")
            first[k] = type(v["low"])(low) if isinstance(v["low"], int) and not isinstance(v["low"], bool) else low
        else:
            raise ConfigError(f"search.space.{k}={v!r} is neither a list of choices nor a range {{low, high}}")
    _check_member(task, MemberConfig(backbone=s.backbone, strategy=s.strategy, params={**s.params, **first}),
                  "search")


def _one_line(e: ValidationError, cls=Config) -> str:
    """pydantic's first error as one line: the key path, the value, what is valid and the closest match."""
    err = e.errors()[0]
    loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
    if err["type"] == "extra_forbidden":
        parent, key = err["loc"][:-1], err["loc"][-1]
        model = cls
        for p in parent:  # walk to the model that owns the key
            field = model.model_fields.get(p) if isinstance(p, str) else None
            if field is None:
                continue
            ann = field.annotation
            sub = getattr(ann, "__args__", (ann,))[0]
            model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else model
        valid = list(model.model_fields)
        return f"{loc}: unknown key {key!r}; valid keys: {valid}{closest(key, valid)}"
    if err["type"] == "missing":
        return f"{loc}: required key is missing; fix: add it (see `tunefuse schema`)"
    ctx = err.get("ctx", {})
    if "expected" in ctx:
        return f"{loc}={err.get('input')!r} is not valid; valid: {ctx['expected']}{closest(err.get('input'), [])}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and isinstance(ctx.get("error"), ConfigError):
        return str(ctx["error"])
    return f"{loc}={err.get('input')!r}: {msg}" if loc else msg


def parse_set(items: list[str]) -> dict:
    """``--set a.b=3 --set members[0].params.epochs=1`` -> a nested update (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value; fix: e.g. --set seed=1 or --set data.limit=200")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def _apply(doc: dict, key: str, value: Any) -> None:
    parts: list[str | int] = []
    for token in key.replace("]", "").split("."):
        name, *idx = token.split("[")
        if name:
            parts.append(name)
        parts += [int(i) if i.lstrip("-").isdigit() else i for i in idx]
    if not parts:
        raise ConfigError(f"--set {key!r}: empty key; fix: e.g. --set seed=1")
    node: Any = doc
    for p, nxt in zip(parts, parts[1:]):
        if isinstance(p, int):
            if not isinstance(node, list) or not -len(node) <= p < len(node):
                raise ConfigError(f"--set {key}: index [{p}] is out of range; the list has "
                                  f"{len(node) if isinstance(node, list) else 0} entries")
            node = node[p]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is not inside a mapping; fix: check the key path")
            node = node.setdefault(p, [] if isinstance(nxt, int) else {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            raise ConfigError(f"--set {key}: index [{last}] is out of range")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: the parent of {last!r} is not a mapping; fix: check the key path")


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist or is not a file; fix: pass the path of a YAML file, "
                          "e.g. examples/reviews.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text (byte {e.start}); fix: save it as UTF-8") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config {str(path)!r} is not valid YAML{where} ({getattr(e, 'problem', e)}); fix: "
                          "check the indentation and quoting there") from None
    if doc is None:
        raise ConfigError(f"config {str(path)!r} is empty; fix: start from examples/reviews.yaml")
    if not isinstance(doc, dict):
        raise ConfigError(f"config {str(path)!r} is a YAML {type(doc).__name__}, not a mapping of keys; fix: start "
                          "from examples/reviews.yaml")
    return doc


def load_config(source, overrides: list[str] | dict | None = None) -> Config:
    """A validated :class:`Config` from a YAML path (or a dict), with ``--set`` style overrides applied."""
    doc = read_yaml(source) if isinstance(source, (str, Path)) else json.loads(json.dumps(source))
    sets = parse_set(overrides) if isinstance(overrides, list) else dict(overrides or {})
    for key, value in sets.items():
        _apply(doc, key, value)
    return validate(doc)


def validate(doc: dict) -> Config:
    try:
        return Config.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


def config_schema() -> dict:
    """The JSON schema of the config (for editors: ``# yaml-language-server: $schema=...``)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tunefuse experiment config"
    return schema
