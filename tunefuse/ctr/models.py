"""CTR networks: field embeddings -> an interaction tower -> ``classifier`` (the new head), saved as safetensors + JSON.

Every architecture maps a row's fields to one vector per field, E (batch, fields, dim): an id's embedding, the mean
of a multi-hot field's embeddings, a number times a learned vector, and the user's history pooled (mean, or attention
to the candidate item in DIN). The tower turns E into a representation h; the head is one linear layer on h, so the
probe, LP-FT, L2-SP, soups and distillation treat a CTR model like any other backbone + head.

- ``deepfm``: h = [first-order sum, FM interaction vector ½((ΣE)² − ΣE²), MLP(E)] (Guo et al., 2017, DeepFM).
- ``dcn-v2``: h = [cross network x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l, MLP(x0)] (Wang et al., 2021, DCN V2).
- ``din``: the history pooled by attention to the candidate item, MLP(E) (Zhou et al., 2018, Deep Interest Network).

Written as small torch modules by hand: pytorch-widedeep (installed for its datasets) has DeepFM, DCN-v2 and DIN, but
its package imports gensim, spacy and opencv, and installing them would downgrade numpy 2.4 to 1.26 and pandas 3.1
(``pip install --dry-run pytorch-widedeep==1.7.0``), so its models cannot be reused beside the project's stack.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .features import FeatureEncoder

ARCHITECTURES = ("deepfm", "dcn-v2", "din")
DEFAULTS = {"model": "deepfm", "embedding_dim": 16, "hidden": [128, 64], "cross_layers": 2, "attention_hidden": 36}
EMBEDDING_STD = 0.05  # small: FM terms are products of two embeddings


class CTRConfig:
    """The JSON side of a CTR checkpoint: architecture, sizes and the head's outputs."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


class CTRNet(nn.Module):
    """Field embeddings + one of :data:`ARCHITECTURES` + a linear ``classifier`` over (no click, click)."""

    def __init__(self, config: dict, encoder: FeatureEncoder):
        super().__init__()
        cfg = dict(DEFAULTS, **config)
        if cfg["model"] not in ARCHITECTURES:
            raise ValueError(f"model={cfg['model']!r} is not a CTR architecture; valid: {list(ARCHITECTURES)}; fix: "
                             "pass task=CTR(model='deepfm') (or use tunefuse.ctr.TabularModel for 'lr' and 'hgb')")
        d, kinds = int(cfg["embedding_dim"]), [f.kind for f in encoder.fields]
        self.tables = [f.name for f in encoder.fields if f.kind in ("id", "multi")]
        self.id_fields = [f.name for f in encoder.fields if f.kind == "id"]
        self.multi_fields = [f.name for f in encoder.fields if f.kind == "multi"]
        self.n_numeric = kinds.count("numeric")
        history = next((f for f in encoder.fields if f.kind == "history"), None)
        if cfg["model"] == "din" and history is None:
            raise ValueError("model='din' attends over the user's history, but the task has none; fix: pass "
                             "CTR(history='history') with a column from tunefuse.ctr.add_history, or model='deepfm'")
        self.item_table = self.tables.index(history.shares) if history is not None else None
        sizes = {f.name: f.size for f in encoder.fields if f.kind in ("id", "multi")}
        self.config = CTRConfig(**cfg, num_labels=2, sizes=[sizes[n] for n in self.tables],
                                fields=[f.name for f in encoder.fields], model_type="tunefuse-ctr",
                                behaviour_tables=self.id_fields[:2])  # FeatureEncoder.fit puts user, item first
        # one container, so freeze_embeddings and L2-SP find every id representation in one place
        self.embeddings = nn.ModuleDict({
            "vectors": nn.ModuleList(nn.Embedding(sizes[n], d, padding_idx=0) for n in self.tables),
            "first_order": nn.ModuleList(nn.Embedding(sizes[n], 1, padding_idx=0) for n in self.tables)})
        for table in self.embeddings["vectors"]:
            nn.init.normal_(table.weight, std=EMBEDDING_STD)
            table.weight.data[0] = 0
        for table in self.embeddings["first_order"]:
            nn.init.zeros_(table.weight)
        self.numeric_vectors = nn.Parameter(torch.randn(self.n_numeric, d) * EMBEDDING_STD)
        self.numeric_first_order = nn.Linear(self.n_numeric, 1) if self.n_numeric else None
        n_fields = len(self.tables) + self.n_numeric + (history is not None)
        flat = n_fields * d
        hidden = [int(h) for h in cfg["hidden"]]
        self.mlp = _mlp([flat] + hidden, float(cfg.get("dropout", 0.0)))
        out = hidden[-1] if hidden else flat
        if cfg["model"] == "deepfm":
            width = 1 + d + out
        elif cfg["model"] == "dcn-v2":
            self.cross = nn.ModuleList(nn.Linear(flat, flat) for _ in range(int(cfg["cross_layers"])))
            width = flat + out
        else:
            a = int(cfg["attention_hidden"])
            self.attention = nn.Sequential(nn.Linear(4 * d, a), nn.ReLU(), nn.Linear(a, 1))
            width = out
        self.classifier = nn.Linear(width, 2)

    def get_input_embeddings(self) -> nn.Module:
        """The behaviour embeddings: the user and item tables (and their first-order weights), the ones behaviour
        pretraining trains; attribute tables never saw a value there, so ``freeze_embeddings`` leaves them to train."""
        names = self.config.behaviour_tables
        return nn.ModuleList([self.embeddings[part][self.tables.index(n)] for n in names
                              for part in ("vectors", "first_order")])

    def _fields(self, ids, history, multi) -> tuple[torch.Tensor, torch.Tensor]:
        """E (batch, fields, dim) and the first-order sum (batch, 1)."""
        vectors, first = self.embeddings["vectors"], self.embeddings["first_order"]
        E, lin = [], []
        for j, name in enumerate(self.id_fields):
            t = self.tables.index(name)
            E.append(vectors[t](ids[:, j]))
            lin.append(first[t](ids[:, j]))
        for name in self.multi_fields:
            t, idx = self.tables.index(name), multi[f"multi:{name}"]
            mask = (idx > 0).unsqueeze(-1).float()
            count = mask.sum(1).clamp(min=1)
            E.append((vectors[t](idx) * mask).sum(1) / count)
            lin.append((first[t](idx) * mask).sum(1) / count)
        return E, lin

    def _history(self, ids, history) -> torch.Tensor:
        table = self.embeddings["vectors"][self.item_table]
        H, mask = table(history), history > 0  # (B, L, d), (B, L)
        if self.config.model != "din":
            m = mask.unsqueeze(-1).float()
            return (H * m).sum(1) / m.sum(1).clamp(min=1)
        q = table(ids[:, self.id_fields.index(self.tables[self.item_table])]).unsqueeze(1).expand_as(H)
        scores = self.attention(torch.cat([H, q, H - q, H * q], -1)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)  # empty history: 0
        return (weights.unsqueeze(-1) * H).sum(1)

    def representation(self, ids: torch.Tensor, numeric: torch.Tensor | None = None,
                       history: torch.Tensor | None = None, **multi) -> torch.Tensor:
        """h of each row: what the head reads."""
        E, lin = self._fields(ids, history, multi)
        if self.n_numeric:
            E += list((numeric.unsqueeze(-1) * self.numeric_vectors).unbind(1))
            lin.append(self.numeric_first_order(numeric))
        if self.item_table is not None:
            E.append(self._history(ids, history))
        E = torch.stack(E, 1)
        x0 = E.flatten(1)
        deep = self.mlp(x0)
        if self.config.model == "deepfm":
            fm = 0.5 * (E.sum(1) ** 2 - (E ** 2).sum(1))
            return torch.cat([torch.stack(lin, 0).sum(0), fm, deep], -1)
        if self.config.model == "dcn-v2":
            x = x0
            for layer in self.cross:
                x = x0 * layer(x) + x
            return torch.cat([x, deep], -1)
        return deep

    def forward(self, ids: torch.Tensor, numeric: torch.Tensor | None = None, history: torch.Tensor | None = None,
                **multi) -> torch.Tensor:
        return self.classifier(self.representation(ids, numeric, history, **multi))

    def save_pretrained(self, folder, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))


def architecture(task, overrides: dict | None) -> dict:
    """The architecture options of ``task`` (None: the defaults) with ``config_overrides`` on top."""
    cfg = {k: getattr(task, k) for k in ("model", "embedding_dim", "hidden", "cross_layers")
           if getattr(task, k, None) is not None}
    cfg = dict(DEFAULTS, **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()})
    unknown = set(overrides or {}) - set(DEFAULTS) - {"dropout"}
    if unknown:
        raise ValueError(f"config_overrides has keys {sorted(unknown)} a CTR model does not take; valid: "
                         f"{sorted(set(DEFAULTS) | {'dropout'})}")
    return dict(cfg, **(overrides or {}))


def check_fields(encoder: FeatureEncoder, task, source: str) -> None:
    """A pretrained start was built for one field layout: the task must give the same columns the same roles, and
    architecture options it sets explicitly must be the start's (the start's weights fix them)."""
    wanted = [(task.user, "id"), (task.item, "id"), *[(c, "id") for c in task.categorical],
              *[(c, "multi") for c in task.multi_hot], *[(c, "numeric") for c in task.numeric]] + (
        [(task.history, "history")] if task.history else [])
    have = [(f.name, f.kind) for f in encoder.fields]
    if wanted != have:
        raise ValueError(f"backbone {source!r} was pretrained on the columns {have} (name, role; user first, item "
                         f"second), but the task gives {wanted}; fix: pass the same CTR(...) columns as at "
                         "pretraining, or backbone='scratch'")
    hashed = {f.name: f.buckets for f in encoder.fields if f.buckets}
    if task.hash_buckets and dict(task.hash_buckets) != hashed:
        raise ValueError(f"hash_buckets={task.hash_buckets!r} differs from the start's {tuple(hashed.items())!r}: the "
                         f"vocabularies of {source!r} are fixed; fix: pass the start's hash_buckets, or ()")


def _check_architecture(task, config: CTRConfig, source: str) -> None:
    for key in ("model", "embedding_dim", "hidden", "cross_layers"):
        want, have = getattr(task, key), getattr(config, key)
        if want is not None and (list(want) if isinstance(want, tuple) else want) != have:
            raise ValueError(f"backbone {source!r} holds a pretrained {key}={have!r}, not {want!r}; fix: pass "
                             f"CTR({key}=None) to take the start's, or pretrain a start with {key}={want!r}")


def load_pretrained(backbone: str, task, X, *, dropout: float | None, config_overrides: dict | None,
                    device: torch.device, encoder: FeatureEncoder | None = None):
    """(model, encoder, max history, source): ``backbone='scratch'`` (random embeddings, vocabularies built on the
    training rows ``X``) or a folder written by :func:`tunefuse.pretrain` (its vocabularies and weights; a new head)."""
    if backbone == "scratch":
        encoder = encoder if encoder is not None else FeatureEncoder.fit(X, task)
        cfg = architecture(task, config_overrides)
        cfg["dropout"] = dropout or 0.0
        import hashlib

        # the feature cache is keyed by source: random starts over different vocabularies must not share one
        source = "scratch:" + hashlib.sha1(json.dumps([encoder.to_dict(), cfg]).encode()).hexdigest()[:16]
        return CTRNet(cfg, encoder).to(device), encoder, task.max_history, source
    folder = Path(str(backbone))
    if not (folder / "pretrain.json").is_file():
        raise ValueError(f"backbone={backbone!r} is not a CTR start; valid: 'scratch' (random embeddings) or a "
                         "folder written by tunefuse.pretrain(log, task='ctr', out=...)")
    model, encoder = load_saved(folder)
    check_fields(encoder, task, str(backbone))
    _check_architecture(task, model.config, str(backbone))
    unknown = set(config_overrides or {}) - {"dropout"}
    if unknown:
        raise ValueError(f"config_overrides={config_overrides!r}: a pretrained start fixes the architecture; fix: "
                         "pass config_overrides=None (dropout is the Finetuner's dropout parameter)")
    if dropout:
        cfg = dict(model.config.to_dict(), dropout=dropout)
        fresh = CTRNet({k: cfg[k] for k in list(DEFAULTS) + ["dropout"]}, encoder)
        fresh.load_state_dict(model.state_dict())
        model = fresh
    nn.init.normal_(model.classifier.weight, std=0.01)  # a new head: the pretraining head scored another target
    nn.init.zeros_(model.classifier.bias)
    return model.to(device), encoder, task.max_history, str(folder.resolve())


def load_saved(path: Path) -> tuple[CTRNet, FeatureEncoder]:
    """(model, encoder) of a CTR folder: safetensors + JSON only, never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
        encoder = FeatureEncoder.load(path)
        model = CTRNet({k: cfg[k] for k in list(DEFAULTS) + ["dropout"] if k in cfg}, encoder)
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} could not be read as a CTR checkpoint ({type(e).__name__}: {str(e)[:160]}); "
                         "the files are damaged or incomplete: save the model again") from e
    return model, encoder
