"""Load-test `tunefuse serve` on 127.0.0.1 and compare the ONNX export's single-example latency with torch's.

    python bench/serve.py [--run runs/reviews] [--seconds 30] [--quick]

The served model is the reviews demo's chosen one (`tunefuse fit examples/reviews.yaml` first; the run folder is
fitted when missing). 8 concurrent clients in a separate process send 1 to 16 reviews a request for ``--seconds``,
against the server with dynamic batching (max 128 inputs, 20 ms wait) and then without (one request a forward pass);
batching_gain is the requests per second of the first over the second; torch's per-review cost by batch size shows
how much of it compute can give on this CPU. Single-example latency: the median of 200 one-review predictions through
tunefuse's own fastest torch path (``Finetuner.predict_proba``: bf16 inference copy, fused attention) against ONNX
Runtime on the fp32 export and on the int8 export (``tunefuse export --int8``; tokenizers + one session run), with
each path's accuracy on test reviews; onnx_speedup_vs_torch is the int8 export's. Ends with
``serve_p50_ms=A serve_p99_ms=B serve_rps=C batching_gain=F onnx_speedup_vs_torch=D errors=E``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_tee, write_results  # noqa: E402

CLIENT = r'''
import json, random, sys, threading, time, urllib.request
url, seconds, texts, clients = sys.argv[1], float(sys.argv[2]), json.loads(open(sys.argv[3]).read()), int(sys.argv[4])
lat, errors, lock = [], [0], threading.Lock()
stop = time.perf_counter() + seconds
def run(seed):
    rng = random.Random(seed)
    while time.perf_counter() < stop:
        body = json.dumps({"inputs": rng.sample(texts, rng.randint(1, 16))}).encode()
        req = urllib.request.Request(url, body, {"content-type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                ok = r.status == 200 and len(json.loads(r.read())["predictions"]) > 0
        except Exception:
            ok = False
        with lock:
            (lat.append(time.perf_counter() - t0) if ok else errors.__setitem__(0, errors[0] + 1))
threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
t0 = time.perf_counter()
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"latencies": lat, "errors": errors[0], "seconds": time.perf_counter() - t0}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "tunefuse.cli", "serve", str(run), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer /health within 300 s")


def load_test(run: Path, texts_file: Path, seconds: float, max_batch: int, max_wait_ms: float) -> dict:
    port = free_port()
    server = start_server(run, port, max_batch, max_wait_ms)
    try:
        out = subprocess.run([sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/predict", str(seconds),
                              str(texts_file), "8"], capture_output=True, text=True, timeout=seconds + 600)
        if out.returncode != 0:
            raise SystemExit(f"the client failed: {out.stderr[-2000:]}")
        res = json.loads(out.stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.array(res["latencies"]) * 1000
    return {"p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "rps": len(lat) / res["seconds"], "requests": len(lat), "errors": res["errors"]}


def single_latency(run: Path, texts: list[str], test: tuple[list[str], list], n: int = 200) -> dict:
    """Median ms of one-review predictions: torch (Finetuner.predict_proba) against ONNX Runtime on the fp32 and the
    int8 export; the int8 model's accuracy beside fp32's on ``test`` rows; per-review cost of torch by batch size."""
    import onnxruntime as ort
    import pandas as pd

    from tunefuse.export import export_onnx, text_proba, text_tokenizer
    from tunefuse.finetuner import Finetuner
    from tunefuse.runs.config import load_config
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder
    from tunefuse.runs.inputs import load_data

    folder = RunFolder(run)
    chosen = json.loads((run / "run.json").read_text())["chosen"]
    est = load_model(folder, chosen)
    name = chosen
    if not isinstance(getattr(est, "estimator", est), Finetuner):  # a fusion: time its first fine-tuned network
        name = next(n for n, m in est.members_ if isinstance(getattr(m, "estimator", m), Finetuner))
        est = load_model(folder, name)
    est = getattr(est, "estimator", est)
    out = run / "export" / name
    data = load_data(load_config(folder.config_file))  # the int8 check: the run's validation rows, as `export --int8`
    check = export_onnx(est, out, int8=True, check_texts=est.task_.check_X(data.X_val)[:1000],
                        check_labels=list(data.y_val)[:1000])
    meta = json.loads((out / "export.json").read_text())
    sessions = {k: ort.InferenceSession(str(out / f), providers=["CPUExecutionProvider"])
                for k, f in (("onnx", "model.onnx"), ("int8", "model.int8.onnx"))}

    tok = text_tokenizer(out / "tokenizer.json", meta)

    def onnx_one(sess):
        return lambda text: text_proba(sess, tok, meta, [text])

    def torch_one(text: str):
        return est.predict_proba(pd.DataFrame({"text": [text]}))

    timings = {}
    for label, fn in (("torch", torch_one), ("onnx", onnx_one(sessions["onnx"])), ("int8", onnx_one(sessions["int8"]))):
        for t in texts[:10]:
            fn(t)  # warm up
        ts = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(texts[i % len(texts)])
            ts.append(time.perf_counter() - t0)
        timings[label] = float(np.median(ts) * 1000)
    test_texts, test_y = test
    labels = np.asarray(meta["labels"])
    acc = {k: float((labels[text_proba(sess, tok, meta, test_texts).argmax(1)]
                     == np.asarray([str(v) for v in test_y])).mean()) for k, sess in sessions.items()}
    acc["torch"] = float((np.asarray(est.predict(pd.DataFrame({"text": test_texts}))) == np.asarray(test_y)).mean())
    per_review = {}  # torch's per-review cost by batch size: what dynamic batching can gain on this CPU
    for b in (1, 8, 32, 128):
        batch = pd.DataFrame({"text": texts[:b]})
        est.predict_proba(batch)
        t0, reps = time.perf_counter(), max(2, 64 // b)
        for _ in range(reps):
            est.predict_proba(batch)
        per_review[b] = (time.perf_counter() - t0) / reps / b * 1000
    return {"name": name, "precision": est.precision_, "ms": timings, "acc": acc, "int8_check": check["int8"],
            "per_review_ms": per_review}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "reviews"))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="10 s load tests")
    ap.add_argument("--max-batch", type=int, default=128, help="the batched server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=20.0, help="the batched server's --max-wait-ms")
    args = ap.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    run = Path(args.run)
    tee = start_tee()
    if not (run / "run.json").is_file() or json.loads((run / "run.json").read_text()).get("status") != "done":
        print(f"fitting the reviews demo into {run} first ...", flush=True)
        subprocess.run([sys.executable, "-m", "tunefuse.cli", "fit", str(ROOT / "examples" / "reviews.yaml"),
                        "--quiet", "--set", f"output={run}"], check=True)
    from tunefuse.datasets import load_reviews

    _, _, Xt, yt = load_reviews(n_train=2000, n_test=4000)
    texts = list(Xt["text"][:500])
    random.Random(0).shuffle(texts)
    texts_file = run / "bench_serve_texts.json"
    texts_file.write_text(json.dumps(texts))
    chosen = json.loads((run / "run.json").read_text())["chosen"]
    print(f"serving {chosen!r} of {run}; 8 clients, 1-16 reviews a request, {seconds:.0f} s a setting")
    batched = load_test(run, texts_file, seconds, args.max_batch, args.max_wait_ms)
    single = load_test(run, texts_file, seconds, 1, 0.0)
    print(f"\n{'setting':<34} {'requests':>8} {'rps':>7} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6}")
    for label, r in ((f"dynamic batching ({args.max_batch}, {args.max_wait_ms:g} ms)", batched),
                     ("one request a forward pass", single)):
        print(f"{label:<34} {r['requests']:>8} {r['rps']:>7.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6}")
    n_test = 400 if args.quick else 2000
    r = single_latency(run, texts, (list(Xt["text"][-n_test:]), list(yt[-n_test:])))
    ms, acc, q = r["ms"], r["acc"], r["int8_check"]
    print(f"\nsingle-review latency of {r['name']!r} (median of 200 one-review calls; accuracy on the last {n_test} "
          "test reviews):")
    print(f"{'path':<46} {'ms':>7} {'speedup':>8} {'accuracy':>9}")
    for key, label in (("torch", f"torch: Finetuner.predict_proba ({r['precision']})"),
                       ("onnx", "ONNX Runtime, fp32 export (model.onnx)"),
                       ("int8", "ONNX Runtime, int8 export (model.int8.onnx)")):
        print(f"{label:<46} {ms[key]:>7.2f} {ms['torch'] / ms[key]:>7.2f}x {acc[key]:>9.4f}")
    print(f"int8 check of `export --int8` on {q['rows']} validation rows: label agreement with fp32 "
          f"{q['label_agreement']:.2%}, accuracy {q.get('int8_accuracy', float('nan')):.4f} vs "
          f"{q.get('fp32_accuracy', float('nan')):.4f}; {q['size_mb']} MB vs {q['fp32_size_mb']} MB")
    pr = r["per_review_ms"]
    print("\ntorch per-review cost by batch size (ms): " + ", ".join(f"{b}: {v:.2f}" for b, v in pr.items()))
    print(f"a request averages 8.5 reviews, so merging requests into batches of 128 saves at most about "
          f"{pr[8] / pr[128]:.2f}x of the compute on this CPU (per-review cost at 8 over at 128); the rest of "
          "batching_gain is per-request overhead")
    gain = batched["rps"] / single["rps"] if single["rps"] else float("nan")
    print(f"\nserve_p50_ms={batched['p50']:.1f} serve_p99_ms={batched['p99']:.1f} serve_rps={batched['rps']:.1f} "
          f"batching_gain={gain:.2f} onnx_speedup_vs_torch={ms['torch'] / ms['int8']:.2f} "
          f"errors={batched['errors'] + single['errors']}")
    write_results(tee, ROOT / "bench" / "results" / f"serve{'_quick' if args.quick else ''}.txt")


if __name__ == "__main__":
    main()
