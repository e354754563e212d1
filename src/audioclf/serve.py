"""Serve: an HTTP classification service and its web page, on top of a loaded classifier. HTTP only: decoding is
audio's (`load_audio`), windows and scores are the classifier's, so an upload gets exactly the answer
`audioclf predict` gives the same file.

Requests that arrive together are classified together: each request decodes its own upload (so a bad file fails
alone, before it can join a batch) and cuts it into the classifier's windows (`plan.cut`), then puts the windows on
a bounded queue that one worker drains in micro-batches (`window_probabilities`), running inference in a thread off
the event loop; the request combines its windows' scores (`combine`) as every other door does.

What one client can hold is bounded at every stage: its request head must arrive within --header-timeout-seconds
(the connection protocol, `GuardedH11Protocol`), its body within --body-timeout-seconds and only while fewer than
--max-connections are open (`_Admission`), its upload under --max-upload-mb and its audio under
--max-audio-seconds (`read_upload`, `decode_upload`), its wait in the queue under --max-queue.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import h11
import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from audioclf.audio import MAX_CHANNELS, MAX_SAMPLING_RATE, MIN_SAMPLING_RATE, load_audio
from audioclf.config import BYTES_PER_KB, SEGMENTS_ALIASES, SEGMENTS_HELP, SEGMENTS_OPTION, ServeSettings
from audioclf.errors import (AudioLoadError, AudioTooLargeError, AudioTooLongError,
                             UnsupportedAudioError)
from audioclf.features import WindowPlan
from audioclf.infer import ClipScores

logger = logging.getLogger("audioclf.serve")

RETRY_AFTER_SECONDS = 1  # what a 503 for a full queue or too many connections tells clients to wait
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before its answer; nobody receives it
# An answer sent before its request's body was read (413, 401, 404...) ends its connection; the rest of the body is
# read and dropped this long first, since closing a socket with unread data resets it, and the reset can reach the
# client before it has read its answer.
LINGER_SECONDS = 1.0
MAX_NAME_CHARS = 120  # an uploaded file name is echoed in error messages; keep it short
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DOCS_ASSETS_PATH = "/docs/assets"  # where /docs and /redoc find their scripts, styles and icon
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
# The docs pages may load nothing from elsewhere: ReDoc's bundle still draws its maker's logo from their CDN (its
# image hides itself when blocked). The pages' own inline script and styles (Swagger UI's set-up, ReDoc's
# styled-components) and ReDoc's search worker (a blob: URL) are allowed.
DOCS_CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
                                "connect-src 'self'")


class ClipClassifier(Protocol):
    """What the server needs of a classifier (audioclf.infer.Classifier is one)."""

    name: str
    id2label: dict[int, str]
    plan: WindowPlan

    @property
    def labels(self) -> list[str]: ...

    @property
    def sampling_rate(self) -> int: ...

    def window_probabilities(self, windows: Sequence[np.ndarray]) -> np.ndarray: ...

    def combine(self, spans: Sequence[tuple[int, int]], window_probabilities: np.ndarray) -> ClipScores: ...


# --- errors -------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


_CODES_BY_STATUS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                    413: "upload_too_large", 415: "unsupported_audio", 422: "invalid_request", 503: "unavailable"}
# Why a connection was closed before any request on it reached the app (GuardedH11Protocol), for /metrics.
CONNECTION_REFUSALS = ("no_request", "header_timeout", "bad_request", "headers_too_large")


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _raw_error_response(status: int, code: str, message: str) -> bytes:
    """The same JSON error as the bytes of a whole HTTP/1.1 response that closes the connection, for the protocol
    to write where no request reached the app (h11 cannot send a response to a request it never parsed)."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def _audio_error(e: AudioLoadError) -> ApiError:
    """The answer to audio that cannot be classified: 413 for audio over the length limit or its budget of samples
    to decode, 415 for what audioclf does not read (no format libsndfile recognises, an unsupported sampling rate or
    channel count), 422 for a recognised format with unusable content (empty, truncated, NaN, absurd values)."""
    if isinstance(e, AudioTooLongError):
        length = f"{e.seconds:.1f} s long" if e.known else f"longer than {e.limit_seconds:g} s (its header does not say)"
        return ApiError(413, "audio_too_long", f"{e.source}: the audio is {length}; this server accepts at most "
                                               f"{e.limit_seconds:g} s (--max-audio-seconds)")
    if isinstance(e, AudioTooLargeError):
        return ApiError(413, "audio_too_large", f"{e} (the budget follows --max-audio-seconds)")
    if isinstance(e, UnsupportedAudioError):
        return ApiError(415, "unsupported_audio", f"{e} (send WAV, FLAC, OGG or MP3 at {MIN_SAMPLING_RATE}-"
                                                  f"{MAX_SAMPLING_RATE} Hz with at most {MAX_CHANNELS} channels)")
    return ApiError(422, "invalid_audio", str(e))


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Prediction(BaseModel):
    label: str
    score: float


class Segment(BaseModel):
    start_seconds: float
    end_seconds: float
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    predictions: list[Prediction]
    duration_seconds: float
    model: str
    segments: list[Segment] | None = None


class LabelsResponse(BaseModel):
    labels: list[str]
    model: str


# --- metrics ------------------------------------------------------------------------------------


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        self.counts[index] += 1
        self.total += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, cumulative = [], 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {_number(self.total)}", f"{name}_count{suffix} {cumulative}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Request counts by method/path/status, request latency by path, and micro-batch sizes.

    Only touched from the event loop, so no lock is needed."""

    def __init__(self):
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.rejected_full_queue = 0
        self.refused_connections = dict.fromkeys(CONNECTION_REFUSALS, 0)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency.setdefault(path, Histogram(LATENCY_BUCKETS_SECONDS)).observe(seconds)

    def render(self, queue_depth: int, ready: bool) -> str:
        lines = ["# HELP audioclf_requests_total HTTP requests answered, by method, path and status.",
                 "# TYPE audioclf_requests_total counter"]
        for (method, path, status), count in sorted(self.requests.items()):
            lines.append(f'audioclf_requests_total{{method="{method}",path="{path}",status="{status}"}} {count}')
        lines += ["# HELP audioclf_request_duration_seconds Time from request to response, by path.",
                  "# TYPE audioclf_request_duration_seconds histogram"]
        for path, histogram in sorted(self.latency.items()):
            lines += histogram.lines("audioclf_request_duration_seconds", f'path="{path}"')
        lines += ["# HELP audioclf_batch_size Clips classified together in one micro-batch.",
                  "# TYPE audioclf_batch_size histogram", *self.batch_sizes.lines("audioclf_batch_size"),
                  "# HELP audioclf_queue_depth Requests waiting for inference.", "# TYPE audioclf_queue_depth gauge",
                  f"audioclf_queue_depth {queue_depth}",
                  "# HELP audioclf_queue_rejections_total Requests answered 503 because the queue was full.",
                  "# TYPE audioclf_queue_rejections_total counter",
                  f"audioclf_queue_rejections_total {self.rejected_full_queue}",
                  "# HELP audioclf_connections_refused_total Connections closed before a request on them reached the "
                  "app: nothing sent in --header-timeout-seconds (no_request), a head begun but not finished in it "
                  "(header_timeout), an unparsable head (bad_request), one over --max-header-kb (headers_too_large).",
                  "# TYPE audioclf_connections_refused_total counter",
                  *(f'audioclf_connections_refused_total{{reason="{reason}"}} {count}'
                    for reason, count in self.refused_connections.items()),
                  "# HELP audioclf_ready Whether the model is loaded and warmed up.", "# TYPE audioclf_ready gauge",
                  f"audioclf_ready {int(ready)}"]
        return "\n".join(lines) + "\n"


class _RequestLog:
    """ASGI middleware: one log line and one metrics observation per HTTP request."""

    def __init__(self, app, metrics: Metrics, known_paths: Callable[[], set[str]]):
        self.app, self.metrics, self.known_paths = app, metrics, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            seconds = time.perf_counter() - started
            # unknown paths share one label, so scanning for URLs cannot grow the metrics without bound
            path = scope["path"] if scope["path"] in self.known_paths() else "other"
            self.metrics.observe_request(scope["method"], path, status, seconds)
            note = " (the client closed the connection)" if status == CLIENT_CLOSED_REQUEST else ""
            logger.info("%s %s %d %.1f ms%s", scope["method"], scope["path"], status, seconds * 1000, note)


CONNECTIONS_EXTENSION = "audioclf.connections"  # scope["extensions"] key: {"open": n, "max": --max-connections}


class _Admission:
    """ASGI middleware: what one request may hold of the server. Past --max-connections (the protocol puts the
    counts in the scope) it is answered 503 at once and its connection closed; its body must arrive within
    --body-timeout-seconds of the app receiving its head, or it is answered 408 and its connection closed."""

    def __init__(self, app, body_timeout_seconds: float):
        self.app, self.body_timeout_seconds = app, body_timeout_seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        connections = scope.get("extensions", {}).get(CONNECTIONS_EXTENSION)
        if connections is not None and connections["open"] > connections["max"]:
            response = _error_response(
                503, "too_many_connections", f"the server has {connections['open']} connections open, at most "
                f"{connections['max']} (--max-connections); retry in {RETRY_AFTER_SECONDS} s",
                {"Retry-After": str(RETRY_AFTER_SECONDS), "Connection": "close"})
            return await response(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds
        body_done = False

        async def receive_in_time():
            nonlocal body_done
            if body_done:  # later calls wait for a disconnect, which may rightly take as long as the response
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except TimeoutError:
                raise ApiError(408, "body_timeout", f"the request body did not arrive within "
                               f"{self.body_timeout_seconds:g} s (--body-timeout-seconds)",
                               {"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


# --- micro-batching -----------------------------------------------------------------------------


@dataclass
class _Job:
    """One request's windows (one for a clip of at most a window) and where their scores go."""

    clips: list[np.ndarray]
    future: asyncio.Future


class MicroBatcher:
    """A bounded queue of jobs and one worker that classifies them in micro-batches.

    The worker takes the first waiting job, then keeps collecting until it has `max_batch` clips or
    `max_wait_ms` has passed, and runs `probabilities` (the classifier's window_probabilities) on all of them in its
    own thread. It only waits while other
    requests are on their way (reading or decoding their upload), so a lone request is not delayed."""

    def __init__(self, probabilities: Callable[[list[np.ndarray]], np.ndarray], settings: ServeSettings,
                 metrics: Metrics, warm_up_clip: np.ndarray):
        self.probabilities = probabilities
        self.max_batch = settings.max_batch
        self.max_wait_seconds = settings.max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_queue)
        self.metrics = metrics
        self.warm_up_clip = warm_up_clip
        self.ready = False
        self.arriving = 0  # requests reading or decoding their upload, whose clips will join the queue soon
        # inference has a thread of its own, so it never waits behind decoding in the default pool
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audioclf-inference")
        self._running: list[_Job] = []  # the batch being classified, answered at shutdown if it never finishes

    @contextmanager
    def arrival(self):
        """Wrap the reading and decoding of a request, so the worker knows to wait for its clips."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def classify(self, clips: list[np.ndarray]) -> np.ndarray:
        """Scores for these clips, shape (len(clips), n_labels), once a batch containing them has run."""
        job = _Job(clips, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.rejected_full_queue += 1
            raise ApiError(503, "overloaded", f"the server is busy ({self.queue.maxsize} requests already waiting); "
                           f"retry in {RETRY_AFTER_SECONDS} s", {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        return await job.future

    async def run(self) -> None:
        """The worker: warm up once, then serve batches until cancelled. The warm-up is a full batch of
        window-long silent clips, so the largest batch's buffers are allocated before /readyz says ready: the first
        busy moment neither waits for them nor grows the server's memory (measured: +67 MB over a bench run with
        a one-clip warm-up)."""
        try:
            await self._infer([self.warm_up_clip] * self.max_batch)
            self.ready = True
        except Exception:
            logger.exception("warm-up inference failed; /readyz stays 503")
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            n_clips = len(jobs[0].clips)
            deadline = loop.time() + self.max_wait_seconds
            while n_clips < self.max_batch:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.arriving == 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(job)
                n_clips += len(job.clips)
            self._running = jobs
            await self._run_batch(jobs)
            self._running = []

    async def _run_batch(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.future.done()]  # a cancelled request needs no answer
        if not jobs:
            return
        clips = [clip for job in jobs for clip in job.clips]
        self.metrics.batch_sizes.observe(len(clips))
        try:
            scores = await self._infer(clips)
        except Exception:
            if len(jobs) > 1:  # find the job that breaks the batch; the others still get their answers
                for job in jobs:
                    await self._run_batch([job])
                return
            logger.exception("inference failed on a batch of %d clip(s)", len(clips))
            _resolve(jobs[0], exception=ApiError(500, "inference_failed", "the model failed on this clip"))
            return
        offset = 0
        for job in jobs:
            _resolve(job, result=scores[offset : offset + len(job.clips)])
            offset += len(job.clips)

    async def _infer(self, clips: list[np.ndarray]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.probabilities, clips)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def fail_pending(self) -> None:
        """Answer every request still waiting (at shutdown, after the worker was cancelled)."""
        pending = list(self._running)
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for job in pending:
            _resolve(job, exception=ApiError(503, "shutting_down", "the server is shutting down"))


def _resolve(job: _Job, result: Any = None, exception: Exception | None = None) -> None:
    if job.future.done():
        return
    if exception is not None:
        job.future.set_exception(exception)
    else:
        job.future.set_result(result)


# --- reading uploads ----------------------------------------------------------------------------


class _UploadTooLarge(Exception):
    pass


def _too_large(max_upload_mb: float) -> ApiError:
    return ApiError(413, "upload_too_large", f"the request body is larger than {max_upload_mb:g} MiB (--max-upload-mb)")


async def read_upload(request: Request, max_bytes: int, max_upload_mb: float) -> tuple[bytes, str]:
    """The uploaded file's bytes and a name for messages: the multipart field `file`, or else the raw body.

    Stops reading as soon as the body passes `max_bytes` (413): Content-Length is checked first, and the bytes are
    counted as they arrive, for bodies sent without one (chunked). Multipart files are spooled to disk past 1 MiB."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_upload_mb)
    received = 0

    async def receive_counted():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _UploadTooLarge
        return message

    counted = Request(request.scope, receive_counted)
    try:
        if counted.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            async with counted.form(max_files=1, max_fields=8) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "missing_file", "the multipart form has no file field named 'file'")
                name = (upload.filename or "upload")[:MAX_NAME_CHARS]
                return await upload.read(), name
        chunks = [chunk async for chunk in counted.stream()]
        return b"".join(chunks), "request body"
    except _UploadTooLarge:
        raise _too_large(max_upload_mb) from None


def decode_upload(data: bytes, name: str, sampling_rate: int, max_audio_seconds: float) -> np.ndarray:
    """Float32 mono samples at `sampling_rate`, or an ApiError: 415/422 for unusable audio, 413 for too long or too
    many samples to decode. A few MiB of compressed audio can declare hours of samples, so the limit is checked from
    the header before decoding, and while decoding where the header does not give the length; decoding holds one
    block of the upload's frames at a time."""
    try:
        return load_audio(data, sampling_rate, name=name, max_seconds=max_audio_seconds)
    except AudioLoadError as e:
        raise _audio_error(e) from None


# --- the app ------------------------------------------------------------------------------------


def _check_query(request: Request, known: Sequence[str]) -> None:
    """A query parameter this endpoint does not take is a 422 naming it, never silently ignored."""
    unknown = [name for name in request.query_params if name not in known]
    if not unknown:
        return
    hints = "".join(f" ('{name}' is called '{SEGMENTS_OPTION}' here)" for name in unknown if name in SEGMENTS_ALIASES)
    raise ApiError(422, "invalid_parameter", f"unknown query parameter(s) {', '.join(map(repr, unknown))}{hints}; "
                                             f"this endpoint takes {', '.join(known)}")


def _bearer_check(api_key: str | None) -> Callable[..., None]:
    if not api_key:
        return lambda: None
    expected = f"Bearer {api_key}".encode()
    # declared so that the schema, and so /docs, says which operations want the key (and Swagger UI can send it);
    # the check itself is the comparison below, which answers in the service's JSON error shape
    scheme = HTTPBearer(auto_error=False, scheme_name="api_key", description="The server's --api-key.")

    def require_api_key(request: Request, _: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})

    return require_api_key


def _page() -> str:
    return (resources.files("audioclf") / "static" / "index.html").read_text(encoding="utf-8")


def _docs_asset(name: str) -> Path:
    """A file of Swagger UI or ReDoc, as fastapi-offline ships them."""
    return Path(str(resources.files("fastapi_offline") / "static" / name))


def _add_api_docs(app: FastAPI, dependencies: list) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc) on /openapi.json, their scripts, styles and icon served from the
    package (FastAPI's own pages load them from a CDN, so they stay blank without internet)."""
    def url(request: Request, path: str) -> str:
        return request.scope.get("root_path", "") + path  # behind a proxy that mounts the service under a prefix

    def asset(request: Request, name: str) -> str:
        return url(request, f"{DOCS_ASSETS_PATH}/{name}")

    def local_only(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return page

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def swagger_ui(request: Request):
        return local_only(get_swagger_ui_html(
            openapi_url=url(request, "/openapi.json"), title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"), swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters={"validatorUrl": None}))  # no validity badge from swagger.io

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc(request: Request):
        return local_only(get_redoc_html(
            openapi_url=url(request, "/openapi.json"), title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"), redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False))

    def serve_file(path: Path, media_type: str):
        async def endpoint():
            return FileResponse(path, media_type=media_type)
        return endpoint

    for name, media_type in DOCS_ASSETS.items():  # public code, open like the page
        app.add_api_route(f"{DOCS_ASSETS_PATH}/{name}", serve_file(_docs_asset(name), media_type), methods=["GET"],
                          include_in_schema=False)


def create_app(classifier: ClipClassifier, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The service as an ASGI app; the micro-batching worker runs while the app's lifespan does."""
    labels = list(classifier.labels)
    sampling_rate = int(classifier.sampling_rate)
    metrics = Metrics()
    batcher = MicroBatcher(classifier.window_probabilities, settings, metrics,
                           np.zeros(classifier.plan.window_samples, dtype=np.float32))
    page = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker
            batcher.fail_pending()
            batcher.close()

    # the schema gets a route of its own below, behind the API key like /metrics
    app = FastAPI(title="audioclf", summary=f"Audio classification with the model {classifier.name!r}",
                  lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error_response(e.status, e.code, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            message = f"no such path: {request.url.path}"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(e.detail)
        return _error_response(e.status_code, _CODES_BY_STATUS.get(e.status_code, "error"), message,
                               getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}"
                             for err in e.errors())
        return _error_response(422, "invalid_parameter", problems)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, e: ClientDisconnect):
        # not a server error, and nobody is left to read this: its status is for the log line and /metrics
        return _error_response(CLIENT_CLOSED_REQUEST, "client_disconnected",
                               "the client closed the connection before sending the whole request")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, e: Exception):
        logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=e)
        return _error_response(500, "internal_error", "internal server error (see the server log)")

    errors = {status: {"model": ErrorBody} for status in (401, 408, 413, 415, 422, 503)}
    require_api_key = Depends(_bearer_check(settings.api_key))
    # what the service runs and how it is used are for its operators: behind the key unless opened for a scraper
    introspection_auth = [] if settings.open_metrics_and_schema else [require_api_key]
    default_k = min(settings.top_k, len(labels))
    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }}}

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              dependencies=[require_api_key], responses=errors, openapi_extra=body_doc)
    async def classify(
        request: Request,
        k: int = Query(default_k, alias="top_k", ge=1, le=len(labels), description="How many labels to return."),
        segments: bool = Query(False, alias=SEGMENTS_OPTION, description=SEGMENTS_HELP),
    ):
        """Classify one clip or recording, sent as the multipart file field `file` or as the raw request body.
        Audio longer than the model's window is scored in its windows and their probabilities averaged, exactly as
        `audioclf predict` scores the same file."""
        _check_query(request, ("top_k", SEGMENTS_OPTION))
        with batcher.arrival():
            data, name = await read_upload(request, settings.max_upload_bytes, settings.max_upload_mb)
            samples = await asyncio.to_thread(decode_upload, data, name, sampling_rate, settings.max_audio_seconds)
            del data
            spans, windows = classifier.plan.cut(samples)
        scores = classifier.combine(spans, await batcher.classify(windows))
        response: dict[str, Any] = {"predictions": scores.predictions(classifier.id2label, k),
                                    "duration_seconds": len(samples) / sampling_rate, "model": classifier.name}
        if segments:
            response["segments"] = scores.segments(classifier.id2label, k)
        return response

    @app.get("/v1/labels", response_model=LabelsResponse, dependencies=[require_api_key], responses=errors)
    async def list_labels():
        """The labels the model can predict, in the model's order."""
        return {"labels": labels, "model": classifier.name}

    @app.get("/healthz")
    async def healthz():
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody}})
    async def readyz():
        """The model is loaded and a warm-up inference has run."""
        if not batcher.ready:
            raise ApiError(503, "not_ready", "the model is warming up")
        return {"status": "ready", "model": classifier.name}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=introspection_auth,
             responses={401: {"model": ErrorBody}})
    async def prometheus_metrics():
        """Request counts, latency and micro-batch sizes in the Prometheus text format."""
        return PlainTextResponse(metrics.render(batcher.queue.qsize(), batcher.ready),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/openapi.json", include_in_schema=False, dependencies=introspection_auth)
    async def openapi_schema():
        return JSONResponse(app.openapi())

    _add_api_docs(app, introspection_auth)  # they show the schema, so they are behind the key when it is

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    known_paths = {route.path for route in app.routes}
    app.add_middleware(_Admission, body_timeout_seconds=settings.body_timeout_seconds)
    app.add_middleware(_RequestLog, metrics=metrics, known_paths=lambda: known_paths)  # outermost: sees every answer
    return app


# --- connections --------------------------------------------------------------------------------


class _NotingConnection(h11.Connection):
    """h11's connection, keeping the error that made a request head unparsable (uvicorn only says 400)."""

    protocol_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.protocol_error = e
            raise


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with what it lacks against slow and hostile clients.

    uvicorn times out idle kept-alive connections but has no read timeout: a client that sends half a request
    head (or one byte of it every few seconds) holds its connection, and a place under --max-connections, for as
    long as it likes, and each byte of a body sent after its request was answered (a 413 before reading it) puts
    off the keep-alive timeout again. Here a head must be complete within `header_timeout_seconds` of the connection
    opening or of its first byte on a kept-alive connection; past it the connection gets a 408 (closed silently if
    it sent nothing); and a connection whose request was answered before its body was read is closed, after
    LINGER_SECONDS of dropping what still arrives. What the protocol refuses itself (timeouts, unparsable or oversized heads) gets the service's JSON
    error and a count in /metrics; the cap on connections is answered by the app (`_Admission`), from the counts
    this protocol puts in the request's scope, so its 503 is logged and counted by path like any other."""

    def __init__(self, config: uvicorn.Config, server_state, app_state, _loop=None, *, metrics: Metrics,
                 header_timeout_seconds: float):
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _NotingConnection(h11.SERVER, config.h11_max_incomplete_event_size)
        self.metrics = metrics
        self.header_timeout_seconds = header_timeout_seconds
        self.head_timer: asyncio.TimerHandle | None = None
        self.lingering = False
        # uvicorn's own check on limit_concurrency answers in text/plain; the app answers it as JSON instead
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self.app = self._app_with_connection_counts

    async def _app_with_connection_counts(self, scope, receive, send) -> None:
        if self.max_connections is not None:  # this connection and this request are among those counted
            scope.setdefault("extensions", {})[CONNECTIONS_EXTENSION] = {
                "open": max(len(self.connections), len(self.tasks)), "max": self.max_connections}
        await self.config.loaded_app(scope, receive, send)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # the rest of a body nobody will read
            return
        if self.conn.their_state is h11.IDLE and self.head_timer is None:
            self._start_head_timer()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or broken, or the connection gone)
            self._stop_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.lingering = True
            if self.transport.can_write_eof():  # not over TLS
                self.transport.write_eof()  # the answer, then the end of what this side sends
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        error = self.conn.protocol_error
        if error is not None and error.error_status_hint == 431:
            status, code = 431, "headers_too_large"
            message = (f"the request line and headers are larger than "
                       f"{self.config.h11_max_incomplete_event_size // BYTES_PER_KB} KiB (--max-header-kb)")
        else:
            reason = str(error or msg)[:MAX_NAME_CHARS]  # h11's reason quotes the client's bytes
            status, code, message = 400, "bad_request", f"malformed HTTP request ({reason})"
        self._refuse(code, _raw_error_response(status, code, message))

    def _start_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(self.header_timeout_seconds, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if not self.conn.trailing_data[0]:  # nothing of a request came: like an idle kept-alive one, just close
            self._refuse("no_request")
            return
        client = "%s:%d" % self.client if self.client else "a client"
        logger.info("%s: closed, its request head was not complete within %g s (--header-timeout-seconds)",
                    client, self.header_timeout_seconds)
        self._refuse("header_timeout", _raw_error_response(
            408, "header_timeout", f"the request line and headers did not arrive within "
                                   f"{self.header_timeout_seconds:g} s (--header-timeout-seconds)"))

    def _refuse(self, reason: str, response: bytes = b"") -> None:
        self.metrics.refused_connections[reason] += 1
        if response:
            self.transport.write(response)
        self.transport.close()


def uvicorn_options(app: FastAPI, settings: ServeSettings) -> dict[str, Any]:
    """uvicorn's options (for uvicorn.run or uvicorn.Config) to run the app create_app made under these settings:
    its address, timeouts, limits and protocol."""
    protocol = functools.partial(GuardedH11Protocol, metrics=app.state.metrics,
                                 header_timeout_seconds=settings.header_timeout_seconds)
    # our middleware logs each request once; uvicorn's access log would repeat it. No WebSocket routes, so no
    # upgrades: they would hand the connection, and its timers, to another protocol.
    return dict(host=settings.host, port=settings.port, http=protocol, ws="none", access_log=False, log_level="info",
                timeout_graceful_shutdown=5, timeout_keep_alive=settings.keep_alive_seconds,
                limit_concurrency=settings.max_connections, h11_max_incomplete_event_size=settings.max_header_bytes)


def serve(model_dir: str | Path, settings: ServeSettings = ServeSettings()) -> None:
    """Load a model directory and serve it with uvicorn until interrupted."""
    from audioclf.infer import load_classifier

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach it can use it", settings.host)
    classifier = load_classifier(model_dir, batch_size=settings.max_batch)
    app = create_app(classifier, settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logger.info("serving %s (%d labels) on http://%s:%d/", classifier.name, len(classifier.labels), host, settings.port)
    uvicorn.run(app, **uvicorn_options(app, settings))
