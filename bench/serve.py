"""Load-test `tunefuse serve` on 127.0.0.1 and compare the ONNX export's single-example latency with torch's.

    python bench/serve.py [--run runs/reviews] [--seconds 30] [--quick]

The served model is the reviews demo's chosen one (`tunefuse fit examples/reviews.yaml` first; the run folder is
fitted when missing). 8 concurrent clients in a separate process send 1 to 16 reviews a request for ``--seconds``,
against the server with dynamic batching (max 128 inputs, 20 ms wait) and then without (one request a forward pass);
batching_gain is the requests per second of the first over the second. Single-example latency: the median of 200
one-review predictions through tunefuse's own fastest torch path (``Finetuner.predict_proba``: bf16 inference copy,
fused attention) against ONNX Runtime on the export (tokenizers + one session run). Ends with
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


def single_latency(run: Path, texts: list[str], n: int = 200) -> tuple[float, float, str]:
    """Median ms of one-review predictions: torch (Finetuner.predict_proba) vs ONNX Runtime on the export."""
    import onnxruntime as ort
    import pandas as pd
    from tokenizers import Tokenizer

    from tunefuse.export import export_onnx
    from tunefuse.finetuner import Finetuner
    from tunefuse.runs.evaluate import load_model
    from tunefuse.runs.folder import RunFolder

    folder = RunFolder(run)
    chosen = json.loads((run / "run.json").read_text())["chosen"]
    est = load_model(folder, chosen)
    name = chosen
    if not isinstance(getattr(est, "estimator", est), Finetuner):  # a fusion: time its first fine-tuned network
        name = next(n for n, m in est.members_ if isinstance(getattr(m, "estimator", m), Finetuner))
        est = load_model(folder, name)
    est = getattr(est, "estimator", est)
    out = run / "export" / name
    export_onnx(est, out)
    meta = json.loads((out / "export.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.enable_truncation(meta["max_length"])
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])

    def onnx_one(text: str):
        e = tok.encode(text)
        feeds = {"input_ids": np.array([e.ids], np.int64), "attention_mask": np.array([e.attention_mask], np.int64)}
        if "token_type_ids" in meta["inputs"]:
            feeds["token_type_ids"] = np.array([e.type_ids], np.int64)
        return sess.run(None, feeds)[0]

    def torch_one(text: str):
        return est.predict_proba(pd.DataFrame({"text": [text]}))

    timings = {}
    for label, fn in (("torch", torch_one), ("onnx", onnx_one)):
        for t in texts[:10]:
            fn(t)  # warm up
        ts = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(texts[i % len(texts)])
            ts.append(time.perf_counter() - t0)
        timings[label] = float(np.median(ts) * 1000)
    return timings["torch"], timings["onnx"], name


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

    _, _, Xt, _ = load_reviews(n_train=2000, n_test=4000)
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
    torch_ms, onnx_ms, name = single_latency(run, texts)
    print(f"\nsingle-review latency of {name!r} (median of 200): torch predict_proba {torch_ms:.2f} ms, "
          f"ONNX Runtime {onnx_ms:.2f} ms (tokenizers + one session run)")
    gain = batched["rps"] / single["rps"] if single["rps"] else float("nan")
    print(f"\nserve_p50_ms={batched['p50']:.1f} serve_p99_ms={batched['p99']:.1f} serve_rps={batched['rps']:.1f} "
          f"batching_gain={gain:.2f} onnx_speedup_vs_torch={torch_ms / onnx_ms:.2f} "
          f"errors={batched['errors'] + single['errors']}")
    write_results(tee, ROOT / "bench" / "results" / f"serve{'_quick' if args.quick else ''}.txt")


if __name__ == "__main__":
    main()
