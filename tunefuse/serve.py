"""``tunefuse serve``: a run's model behind HTTP (FastAPI + uvicorn), with dynamic batching.

    GET  /health     {"status": "ok"}
    GET  /metadata   the run, the model and its kind (member, soup, fusion of N members), task, labels, versions,
                     the verdict, the input format and the limits
    POST /predict    {"inputs": [...]} -> {"model": name, "predictions": [...]}, one prediction an input, in order

Inputs: texts (sentence classification; NER: raw texts -> entity spans), {"question", "context"} objects (QA), row
objects with the task's columns (CTR), base64 image files, PNG/JPEG/... as strings, data URLs too (image
classification -> label and probabilities; segmentation -> {"classes", "mask_png": a base64 PNG of class indices
into "classes", "shape", "pixels" per class}; detection -> {"detections": [{"box": [x1, y1, x2, y2], "label",
"score"}]}). Bad requests get a 4xx with one line naming the field and the fix: 422 for
a malformed body, 413 for more than ``max_items`` inputs, a text over ``max_chars`` or a body over ``max_bytes``
(2 MiB; image tasks 64 MiB); images over 40 M decoded pixels a request.

Dynamic batching: concurrent requests wait up to ``max_wait_ms`` in a queue and are predicted together, up to
``max_batch`` inputs a forward pass, on one worker thread (so the event loop keeps accepting requests). The batching
is written here: no maintained library batches a scikit-learn-style ``predict_proba`` inside FastAPI.
"""
import asyncio  # no `from __future__ import annotations`: FastAPI reads the request model from the annotation
import contextlib
import concurrent.futures
import json
import time
from typing import Any, Callable

import numpy as np

MAX_ITEMS, MAX_CHARS, MAX_BYTES = 64, 20_000, 2 << 20
MAX_IMAGE_BYTES = 64 << 20  # the body limit of image tasks: a few large aerial photos, base64-encoded
MAX_PIXELS = 40_000_000  # decoded pixels a request may hold in all (a "decompression bomb" is a few kB of PNG)
MAX_IMAGE_BATCH = 16  # image tasks' default max_batch: with MAX_PIXELS a request, a batch stays under ~2 GB of RGB
VISION_TASKS = ("image-classification", "image-segmentation", "object-detection")


def decode_image(x: Any, i: int):
    """A base64 image file (or a data URL) -> a PIL image, or ValueError / OverflowError naming inputs[i]."""
    import base64
    import binascii
    import io

    from PIL import Image

    if not isinstance(x, str):
        raise ValueError(f"inputs[{i}] is a {type(x).__name__}, not a base64 string; image tasks take image files "
                         'as base64; fix: send {"inputs": [base64.b64encode(open(path, "rb").read()).decode()]}')
    if x.startswith("data:"):
        x = x.partition(",")[2]
    try:
        raw = base64.b64decode(x, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"inputs[{i}] is not valid base64; fix: send base64.b64encode(file bytes).decode()") from None
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise OverflowError(f"inputs[{i}] is a {im.width}x{im.height} image, over the limit of {MAX_PIXELS:,} "
                                    "pixels; fix: resize it")
            return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    except OverflowError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file; all mean the same to the client
        raise ValueError(f"inputs[{i}] is not an image file PIL can read ({type(e).__name__}); fix: send a PNG, "
                         "JPEG, BMP, TIFF or WebP file, base64-encoded") from None


def _png_b64(mask: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Batcher:
    """Collect concurrent requests' inputs into batches for one ``predict(list) -> list`` call at a time."""

    def __init__(self, predict: Callable[[list], list], max_batch: int = 128, max_wait_ms: float = 20.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunefuse-predict")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = self.items = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, inputs: list) -> list:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            batch, n = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                batch.append(nxt)
                n += len(nxt[0])
            flat = [x for inputs, _ in batch for x in inputs]
            try:
                out = await loop.run_in_executor(self.pool, self.predict, flat)
            except Exception as e:  # noqa: BLE001 - retry one by one: only the requests that fail get an error
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(e)
                    continue
                for inputs, fut in batch:
                    try:
                        res = await loop.run_in_executor(self.pool, self.predict, inputs)
                    except Exception as err:  # noqa: BLE001
                        if not fut.done():
                            fut.set_exception(err)
                    else:
                        if not fut.done():
                            fut.set_result(res)
                continue
            self.batches += 1
            self.items += len(flat)
            i = 0
            for inputs, fut in batch:
                if not fut.done():
                    fut.set_result(out[i:i + len(inputs)])
                i += len(inputs)


def predictor(model, task) -> "tuple[Callable[[list], list], Callable[[list], list]]":
    """(check, predict): ``check(inputs)`` turns request inputs into the model's X (raising ValueError with the
    field and the fix), ``predict(X)`` returns one JSON-able prediction an input."""
    import pandas as pd

    from .runs.evaluate import _jsonable

    def check(inputs: list):
        if task.name in ("text-classification", "token-classification"):
            for i, x in enumerate(inputs):
                if not isinstance(x, str):
                    raise ValueError(f"inputs[{i}] is not a text ({type(x).__name__}); {task.name} takes texts; fix: "
                                     'send {"inputs": ["a text", ...]}')
                if len(x) > MAX_CHARS:
                    raise OverflowError(f"inputs[{i}] has {len(x)} characters, over the limit of {MAX_CHARS}; fix: "
                                        "split the text")
                if task.name == "text-classification" and not x.strip():
                    raise ValueError(f"inputs[{i}] is empty; fix: send non-empty texts")
            X = pd.DataFrame({"text": inputs}) if task.name == "text-classification" else list(inputs)
            return task.check_X(X, "inputs")  # the task's own checks (NER: a text with no word), per request
        if task.name == "question-answering":
            for i, x in enumerate(inputs):
                if not isinstance(x, dict) or not {"question", "context"} <= set(x):
                    raise ValueError(f"inputs[{i}] must be an object with 'question' and 'context'; fix: "
                                     '{"inputs": [{"question": "...", "context": "..."}]}')
                if len(str(x["context"])) > MAX_CHARS:
                    raise OverflowError(f"inputs[{i}].context has {len(str(x['context']))} characters, over "
                                        f"{MAX_CHARS}; fix: send a shorter context")
            return task.check_X(pd.DataFrame({"question": [str(x["question"]) for x in inputs],
                                              "context": [str(x["context"]) for x in inputs]}), "inputs")
        if task.name == "ctr":
            if not all(isinstance(x, dict) for x in inputs):
                raise ValueError("CTR inputs are row objects with the task's columns; fix: "
                                 '{"inputs": [{"user_id": 1, "item_id": 2, ...}]}')
            return task.check_X(pd.DataFrame(inputs), "inputs")  # the task's columns must all be there
        if task.name in VISION_TASKS:
            images, pixels = [], 0
            for i, x in enumerate(inputs):
                images.append(decode_image(x, i))
                pixels += images[-1].width * images[-1].height
                if pixels > MAX_PIXELS:
                    raise OverflowError(f"inputs[:{i + 1}] hold {pixels:,} pixels, over the limit of {MAX_PIXELS:,} "
                                        "a request; fix: send fewer or smaller images a request")
            return task.check_X(images, "inputs")
        raise ValueError(f"serving task={task.name!r} over JSON is not supported yet; fix: predict files with "
                         "`tunefuse predict`")

    def predict(X) -> list:
        if task.is_classifier:
            proba = np.asarray(model.predict_proba(X))
            classes = np.asarray(model.classes_)
            return [{"label": _jsonable(classes[p.argmax()]), "proba": {str(c): float(v) for c, v in zip(classes, p)}}
                    for p in proba]
        if task.name == "image-segmentation":  # a mask of labels -> a PNG of indices into the run's classes
            classes = np.asarray(_labels(model))
            lookup = {c: k for k, c in enumerate(classes.tolist())}
            out = []
            for mask in model.predict(X):
                values, inverse = np.unique(np.asarray(mask), return_inverse=True)
                index = np.array([lookup[v] for v in values.tolist()])[inverse].reshape(np.shape(mask))
                counts = np.bincount(index.ravel(), minlength=len(classes))
                out.append({"classes": _jsonable(classes), "shape": list(index.shape), "mask_png": _png_b64(index),
                            "pixels": {str(c): int(n) for c, n in zip(classes, counts) if n}})
            return out
        if task.name == "object-detection":
            return [{"detections": [{"box": [round(float(v), 2) for v in box], "label": _jsonable(label),
                                     "score": round(float(score), 4)}
                                    for box, label, score in zip(d["boxes"], d["labels"], d["scores"])]}
                    for d in model.predict(X)]
        return [_jsonable(p) for p in model.predict(X)]

    return check, predict


def create_app(run, name: str | None = None, *, max_batch: int | None = None, max_wait_ms: float = 20.0,
               max_items: int = MAX_ITEMS, max_bytes: int | None = None):
    """The FastAPI app serving model ``name`` of run folder ``run`` (default: the verdict's chosen model)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from .runs.config import load_config
    from .runs.evaluate import load_model
    from .runs.experiment import task_entry
    from .runs.folder import RunFolder, versions

    folder = RunFolder(run)
    meta = folder.read_run()
    cfg = load_config(folder.config_file)
    name = name or meta.get("chosen")
    if not name:
        raise ValueError(f"run {str(run)!r} has no chosen model (its fit did not finish); fix: finish it with "
                         "`tunefuse fit`, or pass --model NAME")
    model = load_model(folder, name)
    task = task_entry(cfg)
    max_bytes = max_bytes or (MAX_IMAGE_BYTES if task.name in VISION_TASKS else MAX_BYTES)
    check, predict = predictor(model, task)
    warm = _example(task)
    if warm is not None:
        predict(check(warm))  # warm up: the first forward pass builds the inference copy
    vision = task.name in VISION_TASKS
    max_batch = max_batch or (MAX_IMAGE_BATCH if vision else 128)
    # images are decoded once, in a worker thread, and queued decoded; other inputs are queued as sent and checked
    # again as one batch (a QA or CTR batch is one DataFrame)
    batcher = Batcher(predict if vision else (lambda X: predict(check(X))), max_batch=max_batch,
                      max_wait_ms=max_wait_ms)
    members = getattr(model, "members_", None)
    info = {"run": str(folder.path), "model": name, "task": task.name,
            "kind": f"fusion of {len(members)} members" if members else "single network",
            "labels": _labels(model),
            "verdict": (folder.path / "verdict.txt").read_text().strip() if (folder.path / "verdict.txt").is_file()
            else None, "versions": versions(),
            "limits": {"max_items": max_items, "max_chars": MAX_CHARS, "max_bytes": max_bytes},
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms}}

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: list[Any] = Field(min_length=1)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tunefuse", version=versions()["tunefuse"], lifespan=lifespan)

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(msg.split())}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc) -> JSONResponse:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "body") or "body"
        return error(422, f"{loc}: {err['msg']}; fix: send {{\"inputs\": [...]}} with at least one input")

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _http(request, exc) -> JSONResponse:  # e.g. a body that is not JSON, an unknown path
        return error(exc.status_code, f"{exc.detail}; fix: POST /predict with a JSON body {{\"inputs\": [...]}}")

    @app.middleware("http")
    async def _size_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is None and request.method == "POST":  # chunked: read it (bounded) to know its size
            length = str(len(await request.body()))
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return error(413, f"the request body has {length} bytes, over the limit of {max_bytes}; fix: send "
                              f"fewer inputs a request (at most {max_items})")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "batches": batcher.batches, "inputs": batcher.items}

    @app.get("/metadata")
    async def metadata() -> dict:
        return info

    @app.post("/predict")
    async def predict_route(req: PredictRequest):
        if len(req.inputs) > max_items:
            return error(413, f"inputs has {len(req.inputs)} items, over the limit of {max_items}; fix: split the "
                              "request")
        try:  # validate before queueing: one bad request never fails a batch of others
            checked = await run_in_threadpool(check, req.inputs) if vision else check(req.inputs)
        except OverflowError as e:
            return error(413, str(e))
        except ValueError as e:
            return error(422, str(e))
        t0 = time.perf_counter()
        try:
            out = await batcher.submit(checked if vision else req.inputs)
        except ValueError as e:  # the model's own checks (an unseen label set, a column)
            return error(422, str(e))
        except Exception as e:  # noqa: BLE001 - ours: one line, and the server keeps serving
            return error(500, f"prediction failed inside tunefuse ({type(e).__name__}: {e}); please report it")
        return {"model": name, "predictions": out, "time_ms": round(1000 * (time.perf_counter() - t0), 2)}

    return app


def _labels(model):
    from .runs.evaluate import _jsonable

    return _jsonable(getattr(model, "classes_", getattr(model, "labels_", None)))


def _example(task) -> list | None:
    """A request that warms the model up (None: the task has no input that can be made up: CTR rows)."""
    if task.name == "question-answering":
        return [{"question": "Who?", "context": "Ada wrote it."}]
    if task.name in ("text-classification", "token-classification"):
        return ["warm up"]
    if task.name in VISION_TASKS:
        return [_png_b64(np.zeros((32, 32), np.uint8))]
    return None


def serve(run, name: str | None = None, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int | None = None,
          max_wait_ms: float = 20.0, max_bytes: int | None = None, log_level: str = "warning") -> None:
    import uvicorn

    app = create_app(run, name, max_batch=max_batch, max_wait_ms=max_wait_ms, max_bytes=max_bytes)
    print(json.dumps({"serving": app.title, "url": f"http://{host}:{port}", "model": name or "chosen"}), flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
