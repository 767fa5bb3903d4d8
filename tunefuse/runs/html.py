"""``report.html``: one self-contained file (inline CSS, pictures as base64 PNG) a person opens in any browser.

Verdict first, then the leaderboard (with standard errors and calibration), its chart, learning curves, each
fusion's member weights, the chosen classifier's confusion matrix and reliability diagram, and the task's own
pictures: texts with their predictions, tagged sentences, answered questions, images with labels, masks or boxes,
CTR calibration.
"""
from __future__ import annotations

import base64
import html
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .folder import RunFolder, atomic_write

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:12px}.verdict{background:#eef6ee;border-left:5px solid #3a7;padding:10px 14px;margin:14px 0}
.verdict.noise{background:#fff6e6;border-left-color:#e90}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}tr.chosen td{background:#eef6ee;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.ok{color:#2a7}.bad{color:#c33}
.ent{padding:1px 3px;border-radius:3px;margin:0 1px}.ctx{font-size:12.5px;color:#333}mark{background:#ffe27a}
mark.gold{background:#bde5c8}
"""
PALETTE = ["#ffd8a8", "#b2f2bb", "#a5d8ff", "#eebefa", "#ffc9c9", "#c3fae8", "#ffec99", "#d0bfff", "#e9ecef",
           "#fcc2d7"]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _png_file(draw) -> str:
    """Embed a picture that one of ``tunefuse.report``'s plot functions writes to a path."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.png"
        draw(path)
        return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v, col: str) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        return f"{v:.{2 if col in ('size_mb', 'fit_time_s') else 3 if col == 'predict_time_s' else 4}f}"
    return html.escape(str(v))


def _table(board: pd.DataFrame, chosen: str) -> str:
    cols = [c for c in board.columns if c != "weights"]
    head = "".join(f'<th class="{"l" if c in ("model", "kind") else ""}">{html.escape(c)}</th>' for c in cols)
    rows = []
    for _, r in board.iterrows():
        cls = ' class="chosen"' if r["model"] == chosen else ""
        cells = "".join(f'<td class="{"l" if c in ("model", "kind") else ""}">{_fmt(r[c], c)}</td>' for c in cols)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _board_chart(board: pd.DataFrame, metric: str) -> str:
    plt = _plt()
    b = board.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(b) + 1.3))
    y = np.arange(len(b))
    colors = ["tab:blue" if k == "member" else "tab:orange" for k in b["kind"]]
    ax.barh(y, b["val_score"], xerr=b["val_se"].fillna(0), color=colors, alpha=0.75, capsize=3,
            label="validation ± 1 SE")
    if b["test_score"].notna().any():
        ax.plot(b["test_score"], y, "kD", ms=5, label="test")
    lo = np.nanmin(np.r_[b["val_score"] - b["val_se"].fillna(0), b["test_score"]])
    hi = np.nanmax(np.r_[b["val_score"] + b["val_se"].fillna(0), b["test_score"]])
    pad = max((hi - lo) * 0.15, 0.005)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(y, b["model"])
    ax.set_xlabel(f"{metric} (blue: members, orange: fusions)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def _curves(histories: dict) -> str:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    drawn = False
    for name, hist in histories.items():
        hist = [h for h in hist if h.get("stage") != "probe"]
        if not hist:
            continue
        drawn = True
        x = np.arange(1, len(hist) + 1)
        a1.plot(x, [h.get("train_loss", np.nan) for h in hist], marker="o", label=name)
        a2.plot(x, [h.get("val_score", np.nan) for h in hist], marker="o", label=name)
    if not drawn:
        plt.close(fig)
        return "<p>No member trained by epochs (probes and baselines have no learning curve).</p>"
    a1.set(title="training loss", xlabel="epoch")
    a2.set(title="validation score", xlabel="epoch")
    from matplotlib.ticker import MaxNLocator

    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.legend(fontsize=7)
    return _png(fig)


def _weights(fusions: dict) -> str:
    shown = {n: f.weights_ for n, f in fusions.items() if getattr(f, "weights_", None)}
    if not shown:
        return ""
    plt = _plt()
    members = sorted({m for w in shown.values() for m in w})
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(shown) + 1.2))
    left = np.zeros(len(shown))
    for j, m in enumerate(members):
        vals = np.array([float(w.get(m, 0.0)) for w in shown.values()])
        total = np.array([sum(abs(float(x)) for x in w.values()) or 1.0 for w in shown.values()])
        ax.barh(list(shown), np.abs(vals) / total, left=left, label=m, color=f"C{j % 10}")
        left += np.abs(vals) / total
    ax.set_xlabel("share of each member (|weight| normalised)")
    ax.legend(fontsize=7, ncol=min(4, len(members)), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _png(fig)


def _confusion(y_true, y_pred, classes) -> str:
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    cm = confusion_matrix(np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str),
                          labels=np.asarray(classes).astype(str))
    k = len(classes)
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.5 * k, 8), min(0.8 + 0.5 * k, 7.5)))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true")
    return _png(fig)


def _reliability(curves: dict) -> str:
    from ..calibration import reliability

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for name, (proba, y_idx) in curves.items():
        r = reliability(proba, y_idx)
        ax.plot(r["confidence"], r["accuracy"], marker="o", label=name)
    ax.set(xlabel="confidence (top class probability)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------------------------------ per-task pictures

def _texts(X, y, preds: dict, n: int = 12) -> str:
    """The first ``n`` texts where the shown models disagree or err (then others), each model's label coloured."""
    texts = list(X["text"]) if hasattr(X, "columns") else [str(t) for t in X]
    names = list(preds)
    head = "<tr><th class='l'>text</th><th>true</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in names) + "</tr>"
    hard = [i for i in range(len(texts)) if any(preds[m][i] != y[i] for m in names)]
    shown = (hard + [i for i in range(len(texts)) if i not in set(hard)])[:n]
    rows = []
    for i in sorted(shown):
        cells = "".join(f"<td class='{'ok' if preds[m][i] == y[i] else 'bad'}'>{html.escape(str(preds[m][i]))}</td>"
                        for m in names)
        text = html.escape(texts[i][:220] + ("..." if len(texts[i]) > 220 else ""))
        rows.append(f"<tr><td class='l'>{text}</td><td>{html.escape(str(y[i]))}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _tagged(words, tags, colors) -> str:
    from ..tasks.conll import tag_spans

    out, spans = [], {s: (e, t) for s, e, t in tag_spans(list(tags))}
    i = 0
    while i < len(words):
        if i in spans:
            e, t = spans[i]
            c = colors.setdefault(t, PALETTE[len(colors) % len(PALETTE)])
            out.append(f"<span class='ent' style='background:{c}'>{html.escape(' '.join(words[i:e]))} "
                       f"<sub>{html.escape(t)}</sub></span>")
            i = e
        else:
            out.append(html.escape(words[i]))
            i += 1
    return " ".join(out)


def _ner(X, y, pred, n: int = 8) -> str:
    colors: dict = {}
    rows = []
    for i in range(min(n, len(X))):
        rows.append(f"<tr><td class='l'>{_tagged(X[i], y[i], colors)}</td><td class='l'>"
                    f"{_tagged(X[i], pred[i], colors)}</td></tr>")
    return f"<table><tr><th class='l'>true entities</th><th class='l'>predicted</th></tr>{''.join(rows)}</table>"


def _qa(X, pred, n: int = 6) -> str:
    rows = []
    for ex, p in list(zip(X, pred))[:n]:
        ctx = ex.context
        gold = ex.answers[0] if ex.answers else None
        marked = html.escape(ctx)
        if gold:
            s, t = gold[1], gold[0]
            marked = html.escape(ctx[:s]) + f"<mark class='gold'>{html.escape(t)}</mark>" + html.escape(
                ctx[s + len(t):])
        ok = (p or "") == (gold[0] if gold else "")
        rows.append(f"<tr><td class='l'>{html.escape(ex.question)}</td><td class='l ctx'>{marked[:600]}</td>"
                    f"<td class='l {'ok' if ok else 'bad'}'>{html.escape(p) if p else '<i>no answer</i>'}</td></tr>")
    return ("<p>Gold answers in green.</p><table><tr><th class='l'>question</th><th class='l'>context</th>"
            f"<th class='l'>predicted answer</th></tr>{''.join(rows)}</table>")


def _ctr_calibration(y, probas: dict) -> str:
    from ..ctr.metrics import calibration

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for name, p in probas.items():
        c = calibration(np.asarray(y), p[:, 1])
        ax.plot(c["predicted"], c["observed"], marker="o", label=f"{name} (ECE {c['ece']:.3f})")
    ax.set(xlabel="predicted click probability", ylabel="observed click rate")
    ax.legend(fontsize=7)
    return _png(fig)


def _task_pictures(task, chosen: str, best: str, models: dict, s, extra: dict) -> str:
    from ..report import plot_boxes, plot_image_predictions, plot_masks

    fusions = [n for n, m in models.items() if hasattr(m, "weights_")]
    names = list(dict.fromkeys([chosen, best] + fusions[:1]))  # the chosen model, the best member, a fusion
    test = s.X_test is not None
    X = s.X_test if test else s.X_val
    where = "test" if test else "validation"
    if task.is_classifier:
        y = np.asarray(s.y_test if test else s.y_val)
        probas = extra["test_proba"] if test else extra["val_proba"]
        preds = {n: extra["classes"][n][probas[n].argmax(1)] for n in names}
        if task.name == "ctr":
            return f"<h2>Click calibration ({where})</h2>" + _ctr_calibration(y, {n: probas[n] for n in names})
        if task.modality == "vision":
            idx = np.arange(min(24, len(X)))
            body = _png_file(lambda p: plot_image_predictions(
                p, [X[i] for i in idx] if isinstance(X[0], np.ndarray) else _load_images(X, idx), y[idx],
                preds[chosen][idx], other_pred=preds[best][idx] if best != chosen else None, other_name=best,
                title=f"{chosen} on {where} images (green: right)"))
            return f"<h2>Images and predictions ({where})</h2>" + body
        return (f"<h2>Texts and predictions ({where})</h2><p>Texts where these models disagree or err come first; "
                "green: right, red: wrong.</p>" + _texts(X, y, preds))
    Xc = extra["X_test"] if test else extra["X_val"]
    yc = extra["y_test"] if test else extra["y_val"]
    pred = (extra.get("test_pred") or {}).get(chosen) if test else extra["val_pred"][chosen]
    if pred is None:
        pred = models[chosen].predict(Xc)
    if task.name == "token-classification":
        return f"<h2>Tagged sentences ({where}, {html.escape(chosen)})</h2>" + _ner(Xc, yc, pred)
    if task.name == "question-answering":
        return f"<h2>Answered questions ({where}, {html.escape(chosen)})</h2>" + _qa(Xc, pred)
    if task.name == "image-segmentation" and yc is not None:
        n = min(6, len(Xc))
        imgs = [np.asarray(Xc[i]) if isinstance(Xc[i], np.ndarray) else _load_images(Xc, [i])[0] for i in range(n)]
        return f"<h2>Masks ({where})</h2>" + _png_file(lambda p: plot_masks(
            p, imgs, [yc[i] for i in range(n)], {chosen: [pred[i] for i in range(n)]}, n=n))
    if task.name == "object-detection":
        return f"<h2>Boxes ({where}, {html.escape(chosen)})</h2>" + _png_file(lambda p: plot_boxes(
            p, Xc[0], yc[0] if yc is not None else None, {chosen: pred[0]}))
    return ""


def _load_images(paths, idx):
    from ..vision.images import load_rgb

    return [load_rgb(paths[i]) for i in idx]


def _auto(run: RunFolder) -> str:
    """The auto preset's decision (RUN/auto.json): each candidate's ranking scores, estimate and why."""
    import json

    path = run.path / "auto.json"
    if not path.is_file():
        return ""
    doc = json.loads(path.read_text())
    head = ["candidate", "LogME", "probe acc", "probe log-loss", "estimated fit s", "fit s", "chosen", "why"]

    def cell(v, fmt="{:.4f}"):
        return "" if v is None or (isinstance(v, float) and v != v) else html.escape(fmt.format(v))

    rows = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in (
            html.escape(r["candidate"]), cell(r.get("logme")), cell(r.get("probe_acc")),
            cell(r.get("probe_log_loss")), cell(r.get("estimated_fit_s"), "{:.0f}"), cell(r.get("fit_s"), "{:.0f}"),
            "yes" if r["chosen"] else "no", html.escape(r["reason"]))) + "</tr>" for r in doc["rows"])
    return (f"<p>Ranked by {html.escape(doc['rank_by'])} on {doc['rows_ranked']} training rows; the best "
            f"{doc['top_k']} whose estimated fine-tuning fits {doc['budget_s']:.0f} s were fine-tuned "
            f"({html.escape(doc['strategy'])}).</p><table><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr>{rows}</table>")


def _search(run: RunFolder) -> str:
    """The search's trials (RUN/search.csv): validation score by trial, and the table of states and parameters."""
    path = run.path / "search.csv"
    if not path.is_file():
        return ""
    t = pd.read_csv(path)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    done = t[t.state == "complete"]
    ax.plot(done.trial, done.value, "o", label="complete")
    if len(done):
        ax.plot(done.trial, done.value.cummax(), "-", alpha=0.6, label="best so far")
    pruned = t[t.state == "pruned"]
    if len(pruned):
        ax.plot(pruned.trial, [done.value.min() if len(done) else 0] * len(pruned), "x", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation score")
    ax.legend(fontsize=8)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
        r.trial, r.member, r.state, "" if pd.isna(r.value) else f"{r.value:.4f}", r.params)) + "</tr>"
        for r in t.itertuples())
    return (f"<p>{len(done)} complete, {len(pruned)} pruned, {int((t.state == 'fail').sum())} cut short and run "
            "again; each complete trial is a member of the leaderboard.</p>" + _png(fig)
            + "<table><tr><th>trial</th><th>member</th><th>state</th><th>validation score</th><th>parameters</th>"
            f"</tr>{rows}</table>")


def write_html_report(run: RunFolder, cfg, task, board: pd.DataFrame, v, models: dict, s, extra: dict) -> Path:
    """Write ``RUN/report.html`` (atomic) and return its path."""
    from .folder import versions

    metric = extra.get("metric", "score")
    fusions = {n: m for n, m in models.items() if hasattr(m, "weights_")}
    histories = {n: getattr(m, "history_", []) for n, m in models.items() if n not in fusions}
    parts = [f"<h1>tunefuse run: {html.escape(run.path.name)}</h1>",
             f"<div class='meta'>task {html.escape(task.name)} &middot; {html.escape(s.sizes())} &middot; "
             f"{html.escape(str(s.source or cfg.data.train))[:160]} &middot; written "
             f"{time.strftime('%Y-%m-%d %H:%M')} &middot; "
             + " ".join(f"{k} {html.escape(str(x))}" for k, x in versions().items()) + "</div>",
             f"<div class='verdict{' noise' if v.kind != 'member' and v.within_noise else ''}'><b>Verdict.</b> "
             f"{html.escape(v.text())}</div>",
             "<h2>Leaderboard</h2><p>Ranked by validation score less one standard error (fusions fitted on the "
             "validation rows are scored there by 5-fold cross-fitting). ECE: expected calibration error on "
             f"{'test' if s.X_test is not None else 'validation'} rows, before and after calibration fitted on "
             "validation.</p>", _table(board, v.chosen), _board_chart(board, metric),
             "<h2>Learning curves</h2>", _curves(histories)]
    auto = _auto(run) if getattr(cfg, "auto", None) is not None else ""
    if auto:
        parts += ["<h2>Backbone choice (auto)</h2>", auto]
    search = _search(run) if getattr(cfg, "search", None) is not None else ""
    if search:
        parts += [f"<h2>Search ({html.escape(cfg.search.name)})</h2>", search]
    w = _weights(fusions)
    if w:
        parts += ["<h2>Fusion weights</h2>", w]
    if task.is_classifier and task.name != "ctr":
        test = s.X_test is not None and s.y_test is not None
        y = np.asarray(s.y_test if test else s.y_val)
        probas = extra["test_proba"] if test else extra["val_proba"]
        cls = extra["classes"][v.chosen]
        parts += [f"<h2>Confusion matrix ({v.chosen}, {'test' if test else 'validation'})</h2>",
                  _confusion(y, cls[probas[v.chosen].argmax(1)], cls)]
        curves = {}
        for n in dict.fromkeys([v.chosen, v.best_member]):
            c = extra["classes"][n]
            ok = np.isin(y, c)
            yi = np.searchsorted(c, y[ok])
            curves[n] = (probas[n][ok], yi)
            curves[f"{n} calibrated"] = (extra["calibrators"][n](probas[n][ok]), yi)
        parts += ["<h2>Reliability diagram</h2>", _reliability(curves)]
    parts.append(_task_pictures(task, v.chosen, v.best_member, models, s, extra))
    doc = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tunefuse report: "
           f"{html.escape(run.path.name)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = run.path / "report.html"
    atomic_write(path, doc)
    return path
