"""The HTTP service, through FastAPI's test client, with a tiny Whisper model whose head tells the tone classes apart."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from audioclf.errors import ConfigError
from audioclf.infer import Classifier, load_classifier, top_k
from audioclf.serve import CONNECTIONS_EXTENSION, GuardedH11Protocol, ServeSettings, create_app, uvicorn_options
from audioclf.testing import class_clip, save_tone_model

LABELS = ["low", "high", "noise"]
RATE = 16_000  # Hz, the tiny Whisper model's rate
WINDOW_SECONDS = 1  # the tiny model's window, so inference stays cheap


def save_tiny_tone_model(directory: Path) -> Path:
    return save_tone_model(directory, "tiny-whisper", tuple(LABELS))


def wav_bytes(samples: np.ndarray, sampling_rate: int = RATE, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sampling_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def clip(label: str, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return class_clip(label, seconds, RATE, seed=seed)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    return load_classifier(save_tiny_tone_model(tmp_path_factory.mktemp("serve") / "tiny-tones"))


@contextmanager
def running(classifier, **settings):
    """A test client for an app with these settings, once its warm-up inference is done."""
    app = create_app(classifier, ServeSettings(**settings))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.02)
        yield client


@dataclasses.dataclass
class LiveServer:
    """A real uvicorn server on loopback, run as `audioclf serve` runs it, and what its app answered."""

    port: int
    app: object
    answers: list[tuple[int, str | None]]  # (status, error code) of each response the app sent, read or not

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def live_server(classifier, **settings):
    """uvicorn with `uvicorn_options` (the options `serve` runs it with) in a thread, on a free port, until /readyz
    says ready. The app is wrapped only to note what it answers, so a test can see the answer to a client that left."""
    settings = ServeSettings(**settings)
    app = create_app(classifier, settings)
    answers: list[tuple[int, str | None]] = []

    async def noting_answers(scope, receive, send):
        status = None

        async def note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status is not None:
                try:
                    code = json.loads(message.get("body", b""))["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
                answers.append((status, code))
                status = None
            await send(message)

        await app(scope, receive, note if scope["type"] == "http" else send)

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(noting_answers, **uvicorn_options(app, settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    live = LiveServer(listener.getsockname()[1], app, answers)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(trust_env=False, timeout=5) as client:
            while True:
                assert time.monotonic() < deadline and thread.is_alive(), "the server never became ready"
                try:
                    if client.get(f"{live.url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        answers.clear()
        yield live
    finally:
        server.should_exit = True
        thread.join(15)
        listener.close()


@dataclasses.dataclass(frozen=True)
class RawResponse:
    status: int | None  # None: the server closed the connection without answering
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the end of what was sent until the server closed the connection (or stopped sending)
    closed: bool

    def json(self):
        return json.loads(self.body)


def read_response(sock: socket.socket, wait_seconds: float = 10) -> RawResponse:
    """Everything the server sends on `sock` until it closes the connection (or `wait_seconds` pass)."""
    started = time.monotonic()
    sock.settimeout(wait_seconds)
    data, closed = b"", False
    try:
        while chunk := sock.recv(65536):
            data += chunk
        closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    seconds = time.monotonic() - started
    if not data:
        return RawResponse(None, {}, b"", seconds, closed)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return RawResponse(int(status_line.split()[1]), headers, body, seconds, closed)


@pytest.fixture(scope="module")
def client(classifier):
    with running(classifier) as client:
        yield client


def expected(classifier, samples: np.ndarray, k: int) -> list[dict]:
    return classifier.classify(samples, top_k=k)


def assert_same_predictions(got: list[dict], want: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)


def assert_error(response, status: int, code: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message = body["error"]["message"]
    for word in words:
        assert word in message
    assert "Traceback" not in response.text
    return message


# --- classify -----------------------------------------------------------------------------------


def test_the_tiny_model_tells_the_tone_classes_apart(classifier):
    for label in LABELS:
        assert classifier.classify(clip(label, seed=20), top_k=1)[0]["label"] == label


def test_classify_multipart_matches_the_classifier(client, classifier):
    samples = clip("high", seed=5)
    response = client.post("/v1/classify", files={"file": ("high.wav", wav_bytes(samples), "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions", "duration_seconds", "model"}
    assert body["model"] == "tiny-tones"
    assert body["duration_seconds"] == pytest.approx(1.0)
    assert body["predictions"][0]["label"] == "high"
    decoded = sf.read(io.BytesIO(wav_bytes(samples)), dtype="float32")[0]
    assert_same_predictions(body["predictions"], expected(classifier, decoded, 3))


def test_classify_raw_body_resamples_and_reports_duration(client, classifier):
    samples = class_clip("low", 1.5, 8000, seed=3)  # 8 kHz: the server resamples to the model's 16 kHz
    response = client.post("/v1/classify", content=wav_bytes(samples, 8000), headers={"content-type": "audio/wav"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration_seconds"] == pytest.approx(1.5)
    from audioclf.audio import load_audio

    assert_same_predictions(body["predictions"], expected(classifier, load_audio(wav_bytes(samples, 8000), RATE), 3))


def test_top_k_default_is_capped_at_the_number_of_labels(client):
    samples = wav_bytes(clip("noise"))
    assert len(client.post("/v1/classify", content=samples).json()["predictions"]) == 3  # default 5, 3 labels
    for k in (1, 2, 3):
        predictions = client.post(f"/v1/classify?top_k={k}", content=samples).json()["predictions"]
        assert len(predictions) == k and predictions[0]["label"] == "noise"


@pytest.mark.parametrize("k", ["0", "4", "-1", "two"])
def test_top_k_outside_1_to_n_labels_is_422(client, k):
    assert_error(client.post(f"/v1/classify?top_k={k}", content=wav_bytes(clip("low"))), 422, "invalid_parameter", "top_k")


def test_settings_top_k_sets_the_default(classifier):
    with running(classifier, top_k=1) as client:
        assert len(client.post("/v1/classify", content=wav_bytes(clip("low"))).json()["predictions"]) == 1


def test_segments_are_half_overlapping_windows_and_their_mean(client, classifier):
    samples = np.concatenate([clip("low", 1.0, seed=7), clip("high", 1.2, seed=8)])  # 2.2 s: longer than the window
    body = client.post("/v1/classify?segments=true&top_k=3", content=wav_bytes(samples)).json()
    spans = [(s["start_seconds"], s["end_seconds"]) for s in body["segments"]]
    assert spans == pytest.approx([(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.2, 2.2)])
    decoded = sf.read(io.BytesIO(wav_bytes(samples)), dtype="float32")[0]
    windows = [decoded[int(a * RATE) : round(b * RATE)] for a, b in spans]
    scores = classifier.window_probabilities(windows)
    for segment, row in zip(body["segments"], scores):
        assert_same_predictions(segment["predictions"], top_k(row, dict(enumerate(LABELS)), 3))
    assert body["segments"][0]["predictions"][0]["label"] == "low"
    assert body["segments"][-1]["predictions"][0]["label"] == "high"
    assert_same_predictions(body["predictions"], top_k(scores.mean(axis=0), dict(enumerate(LABELS)), 3))


def test_a_clip_within_one_window_is_one_segment(client):
    body = client.post("/v1/classify?segments=true", content=wav_bytes(clip("low", 0.8))).json()
    assert body["segments"] == [{"start_seconds": 0.0, "end_seconds": pytest.approx(0.8),
                                 "predictions": body["predictions"]}]


def test_long_audio_is_scored_in_windows_without_asking_for_segments(client, classifier):
    """The default answer is the mean of every window, as predict gives it, not the first window's."""
    samples = np.concatenate([clip("low", 1.0, seed=9), clip("high", 3.0, seed=10)])  # mostly high, low at the start
    body = client.post("/v1/classify", content=wav_bytes(samples)).json()
    assert "segments" not in body
    assert body["predictions"][0]["label"] == "high"
    assert classifier.classify(samples[:RATE], top_k=1)[0]["label"] == "low"  # what a first-window answer would say
    decoded = sf.read(io.BytesIO(wav_bytes(samples)), dtype="float32")[0]
    assert_same_predictions(body["predictions"], expected(classifier, decoded, 3))


@pytest.mark.parametrize("query, words", [("timeline=true", ["'timeline'", "is called 'segments'"]),
                                          ("segment=1", ["'segment'", "top_k, segments"])])
def test_unknown_query_parameters_are_422_naming_the_right_one(client, query, words):
    response = client.post(f"/v1/classify?{query}", content=wav_bytes(clip("low")))
    assert_error(response, 422, "invalid_parameter", *words)


# --- bad uploads --------------------------------------------------------------------------------


def truncated_wav() -> bytes:
    return wav_bytes(clip("low"))[:20_000]  # the header promises 32,000 bytes of samples


def nan_wav() -> bytes:
    samples = clip("low")
    samples[100:200] = np.nan
    return wav_bytes(samples, subtype="FLOAT")


@pytest.mark.parametrize(
    "make, status, code, reason",
    [
        (lambda: b"", 422, "invalid_audio", "empty"),
        (lambda: b"this is not audio, just text saved as .wav\n" * 20, 415, "unsupported_audio", "not a readable audio file"),
        (truncated_wav, 422, "invalid_audio", "truncated"),
        (nan_wav, 422, "invalid_audio", "non-finite"),
    ],
    ids=["empty", "text-as-wav", "truncated-wav", "nan-float-wav"],
)
def test_bad_audio_is_an_error_naming_the_reason(client, make, status, code, reason):
    message = assert_error(client.post("/v1/classify", files={"file": ("clip.wav", make(), "audio/wav")}),
                           status, code, reason)
    assert message.startswith("clip.wav: ")
    assert_error(client.post("/v1/classify", content=make()), status, code, reason)
    assert client.get("/healthz").status_code == 200  # and the server goes on


def test_paths_in_request_data_are_never_opened(client, tmp_path):
    wav = tmp_path / "on-the-server.wav"
    wav.write_bytes(wav_bytes(clip("low")))
    assert_error(client.post("/v1/classify", content=str(wav).encode()), 415, "unsupported_audio", "request body: ")
    response = client.post("/v1/classify", files={"file": (str(wav), str(wav).encode(), "audio/wav")})
    assert_error(response, 415, "unsupported_audio", f"{wav}: not a readable audio file")


def test_multipart_without_a_file_field_is_422(client):
    assert_error(client.post("/v1/classify", files={"audio": ("a.wav", wav_bytes(clip("low")), "audio/wav")}),
                 422, "missing_file", "'file'")
    assert_error(client.post("/v1/classify", data={"file": "not a file"}, files={"other": ("x", b"x")}),
                 422, "missing_file")


def test_audio_longer_than_max_audio_seconds_is_413(classifier):
    with running(classifier, max_audio_seconds=1.5) as client:
        assert client.post("/v1/classify", content=wav_bytes(clip("low", 1.4))).status_code == 200
        assert_error(client.post("/v1/classify", content=wav_bytes(clip("low", 2.0))), 413, "audio_too_long",
                     "2.0 s", "1.5 s", "--max-audio-seconds")


def test_upload_over_max_upload_mb_is_413(classifier):
    limit_mb = 0.05  # 52,428 bytes: a 1 s 16-bit clip (32,044 bytes) fits, a 2 s one does not
    with running(classifier, max_upload_mb=limit_mb) as client:
        assert client.post("/v1/classify", content=wav_bytes(clip("low"))).status_code == 200
        big = wav_bytes(clip("low", 2.0))
        assert_error(client.post("/v1/classify", content=big), 413, "upload_too_large", "0.05 MiB")
        assert_error(client.post("/v1/classify", files={"file": ("big.wav", big, "audio/wav")}), 413, "upload_too_large")


def test_an_upload_without_content_length_is_cut_off_at_the_limit(classifier):
    """A chunked body is counted as it arrives: the app stops asking for chunks past the limit, answers 413."""
    app = create_app(classifier, ServeSettings(max_upload_mb=0.05))
    chunk = b"\0" * 8192
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < 1000}  # 8 MB if all were read

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/classify", "raw_path": b"/v1/classify",
             "root_path": "", "scheme": "http", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "upload_too_large"
    assert pulled == 7  # 7 x 8 KiB is the first count past 50 KiB


# --- other endpoints, errors and auth -----------------------------------------------------------


def test_labels_health_ready_openapi_and_page(client):
    assert client.get("/v1/labels").json() == {"labels": LABELS, "model": "tiny-tones"}
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny-tones"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/labels", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="file"', 'id="api-key"', 'id="record"', 'id="top-label"', 'id="error"', "v1/classify"):
        assert element in page.text


def test_wrong_path_and_method_are_json_404_and_405(client):
    assert_error(client.get("/v1/nope"), 404, "not_found", "/v1/nope")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed", "GET")
    response = client.post("/healthz")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET"


OPEN_PATHS = ("/healthz", "/readyz", "/")  # what probes and the page need, open whatever the settings


def test_api_key_is_required_on_v1_metrics_and_schema(classifier):
    samples = wav_bytes(clip("low"))
    with running(classifier, api_key="s3cret") as client:
        for request in (lambda **kw: client.post("/v1/classify", content=samples, **kw),
                        lambda **kw: client.get("/v1/labels", **kw),
                        lambda **kw: client.get("/metrics", **kw),
                        lambda **kw: client.get("/openapi.json", **kw)):
            response = request()
            assert_error(response, 401, "unauthorized", "Bearer")
            assert response.headers["www-authenticate"] == "Bearer"
            assert_error(request(headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
            assert_error(request(headers={"Authorization": "s3cret"}), 401, "unauthorized")
            assert request(headers={"Authorization": "Bearer s3cret"}).status_code == 200
        for path in OPEN_PATHS:
            assert client.get(path).status_code == 200, path
        spec = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert "/openapi.json" not in spec["paths"] and "/metrics" in spec["paths"]


def test_open_metrics_and_schema_opens_only_those_two(classifier):
    with running(classifier, api_key="s3cret", open_metrics_and_schema=True) as client:
        for path in ("/metrics", "/openapi.json", *OPEN_PATHS):
            assert client.get(path).status_code == 200, path
        assert_error(client.get("/v1/labels"), 401, "unauthorized")
        assert_error(client.post("/v1/classify", content=wav_bytes(clip("low"))), 401, "unauthorized")
        assert "audioclf_requests_total" in client.get("/metrics").text


DOCS_PAGES = ("/docs", "/redoc")


def test_docs_and_redoc_load_their_assets_from_the_server(client):
    for path in DOCS_PAGES:
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]  # the browser itself keeps the page from loading elsewhere
        assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
        referenced = re.findall(r'(?:src|href|spec-url)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert "/openapi.json" in referenced
        assert all(url.startswith("/") for url in referenced), referenced  # nothing from outside
        assert "http://" not in page.text and "https://" not in page.text
        for url in referenced:
            answer = client.get(url)
            assert answer.status_code == 200, url
            if url.endswith(".js"):
                assert answer.headers["content-type"].startswith("text/javascript") and len(answer.content) > 100_000


def test_docs_are_behind_the_api_key_like_the_schema(classifier):
    with running(classifier, api_key="s3cret") as client:
        for path in DOCS_PAGES:
            assert_error(client.get(path), 401, "unauthorized")
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/docs/assets/swagger-ui.css").status_code == 200  # public code, like the page
        spec = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        # the schema says which operations want the key, so Swagger UI's Authorize button can send it
        assert spec["components"]["securitySchemes"]["api_key"] == {
            "type": "http", "scheme": "bearer", "description": "The server's --api-key."}
        assert spec["paths"]["/v1/classify"]["post"]["security"] == [{"api_key": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]
    with running(classifier, api_key="s3cret", open_metrics_and_schema=True) as client:
        for path in DOCS_PAGES:
            assert client.get(path).status_code == 200


def test_without_an_api_key_v1_is_open(client):
    assert client.get("/v1/labels").status_code == 200


def test_cors_is_closed_unless_an_origin_is_given(client, classifier):
    preflight = {"Origin": "http://allowed.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.get("/v1/labels", headers={"Origin": "http://allowed.test"}).headers
    assert client.options("/v1/classify", headers=preflight).status_code == 405
    with running(classifier, cors_origins=("http://allowed.test",)) as cors:
        response = cors.options("/v1/classify", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://allowed.test"
        other = cors.get("/v1/labels", headers={"Origin": "http://other.test"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("name, value", [("max_batch", 0), ("max_queue", 0), ("top_k", 0), ("max_upload_mb", 0),
                                         ("max_wait_ms", -1), ("max_audio_seconds", -5), ("port", 0),
                                         ("header_timeout_seconds", 0), ("body_timeout_seconds", -1),
                                         ("keep_alive_seconds", 0), ("max_connections", 0), ("max_header_kb", 0)])
def test_settings_are_checked(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} {value}"):
        ServeSettings(**{name: value})


def test_cli_serve_maps_every_flag_onto_serve_settings(monkeypatch, tmp_path):
    import audioclf.serve
    from audioclf.cli import app

    calls = []
    monkeypatch.setattr(audioclf.serve, "serve", lambda model_dir, settings: calls.append((model_dir, settings)))
    monkeypatch.delenv("AUDIOCLF_API_KEY", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["serve", str(tmp_path)]).exit_code == 0
    assert calls[-1] == (tmp_path, ServeSettings())  # the CLI's defaults are the settings' defaults
    args = ["serve", str(tmp_path), "--host", "0.0.0.0", "--port", "9001", "--max-batch", "3", "--max-wait-ms", "2.5",
            "--max-queue", "7", "--max-upload-mb", "1.5", "--max-audio-seconds", "30", "--api-key", "k",
            "--cors-origin", "http://a.test", "--cors-origin", "http://b.test", "--top-k", "2",
            "--open-metrics-and-schema", "--header-timeout-seconds", "3", "--body-timeout-seconds", "20",
            "--keep-alive-seconds", "2.5", "--max-connections", "40", "--max-header-kb", "8"]
    assert runner.invoke(app, args).exit_code == 0
    want = ServeSettings(host="0.0.0.0", port=9001, max_batch=3, max_wait_ms=2.5, max_queue=7, max_upload_mb=1.5,
                         max_audio_seconds=30, api_key="k", cors_origins=("http://a.test", "http://b.test"), top_k=2,
                         open_metrics_and_schema=True, header_timeout_seconds=3, body_timeout_seconds=20,
                         keep_alive_seconds=2.5, max_connections=40, max_header_kb=8)
    assert calls[-1][1] == want
    assert all(getattr(want, f.name) != f.default for f in dataclasses.fields(ServeSettings))  # every flag was wired
    assert runner.invoke(app, ["serve", str(tmp_path)], env={"AUDIOCLF_API_KEY": "from-env"}).exit_code == 0
    assert calls[-1][1].api_key == "from-env"
    result = runner.invoke(app, ["serve", str(tmp_path), "--max-batch", "0"])
    assert result.exit_code == 1 and "--max-batch 0" in result.output


# --- micro-batching -----------------------------------------------------------------------------


class Recording:
    """Wraps a classifier: records each batch's size, and can fail or block on demand."""

    def __init__(self, inner: Classifier, fail_when=None):
        self.inner = inner
        self.fail_when = fail_when
        self.batch_sizes: list[int] = []
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def labels(self):
        return self.inner.labels

    @property
    def sampling_rate(self):
        return self.inner.sampling_rate

    def window_probabilities(self, clips):
        self.batch_sizes.append(len(clips))
        if self.hold:
            self.entered.set()
            assert self.release.wait(30)
        if self.fail_when is not None and any(self.fail_when(c) for c in clips):
            raise RuntimeError("boom")
        return self.inner.window_probabilities(clips)


def post_in_threads(client, bodies: list[bytes]) -> tuple[list, list[threading.Thread]]:
    """Start one thread per body posting it as clip{i}.wav; the responses fill in as they come."""
    responses: list = [None] * len(bodies)

    def post(i):
        responses[i] = client.post("/v1/classify", files={"file": (f"clip{i}.wav", bodies[i], "audio/wav")})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    return responses, threads


def classify_together(client, recording: Recording, bodies: list[bytes], n_queued: int) -> list:
    """Post the bodies concurrently while the worker is held on another request, so that the `n_queued` of them
    that decode are all waiting when it is released and go into one batch (the real queue and worker)."""
    recording.hold = True
    blocker, blocker_threads = post_in_threads(client, [wav_bytes(clip("noise", seed=99))])
    assert recording.entered.wait(30)
    recording.hold = False
    responses, threads = post_in_threads(client, bodies)
    deadline = time.monotonic() + 30
    while client.app.state.batcher.queue.qsize() < n_queued:
        assert time.monotonic() < deadline, "the clips never reached the queue"
        time.sleep(0.01)
    recording.release.set()
    for t in blocker_threads + threads:
        t.join(60)
    assert blocker[0].status_code == 200
    return responses


def test_a_corrupt_clip_does_not_affect_the_others_in_its_batch(classifier):
    recording = Recording(classifier)
    good = [clip(label, seed=30 + i) for i, label in enumerate(["low", "high", "noise", "high"])]
    bodies = [wav_bytes(c) for c in good]
    bodies.insert(2, truncated_wav())
    with running(recording, max_batch=8) as client:
        recording.batch_sizes.clear()
        responses = classify_together(client, recording, bodies, n_queued=len(good))
    assert_error(responses.pop(2), 422, "invalid_audio", "clip2.wav", "truncated")
    assert recording.batch_sizes == [1, len(good)]  # the blocker, then the good clips together
    for response, samples in zip(responses, good):
        assert response.status_code == 200, response.text
        assert_same_predictions(response.json()["predictions"], expected(classifier, samples, 3))


def test_a_clip_that_breaks_inference_fails_alone(classifier):
    poison_seconds = 0.77
    recording = Recording(classifier, fail_when=lambda c: len(c) == int(poison_seconds * RATE))
    good = [clip("low", seed=40), clip("high", seed=41), clip("noise", seed=42)]
    bodies = [wav_bytes(c) for c in good] + [wav_bytes(clip("low", poison_seconds))]
    with running(recording, max_batch=4) as client:
        recording.batch_sizes.clear()
        responses = classify_together(client, recording, bodies, n_queued=4)
        assert client.get("/readyz").status_code == 200
    assert_error(responses.pop(), 500, "inference_failed")
    assert recording.batch_sizes == [1, 4, 1, 1, 1, 1]  # the blocker; all four failed together; then one by one
    for response, samples in zip(responses, good):
        assert response.status_code == 200, response.text
        assert_same_predictions(response.json()["predictions"], expected(classifier, samples, 3))


def test_max_batch_splits_what_is_waiting(classifier):
    recording = Recording(classifier)
    bodies = [wav_bytes(clip("low", seed=50 + i)) for i in range(5)]
    with running(recording, max_batch=2) as client:
        recording.batch_sizes.clear()
        responses = classify_together(client, recording, bodies, n_queued=5)
    assert recording.batch_sizes == [1, 2, 2, 1]
    assert all(r.status_code == 200 for r in responses)


def test_a_lone_request_does_not_wait_for_max_wait_ms(classifier):
    with running(classifier, max_wait_ms=5000) as client:  # nobody else is on the way: no reason to wait
        started = time.monotonic()
        assert client.post("/v1/classify", content=wav_bytes(clip("low"))).status_code == 200
        assert time.monotonic() - started < 2.5


def test_a_full_queue_answers_503_with_retry_after(classifier):
    recording = Recording(classifier)
    body = wav_bytes(clip("low"))
    with running(recording, max_batch=1, max_wait_ms=0, max_queue=1) as client:
        batcher = client.app.state.batcher
        recording.hold = True
        first = threading.Thread(target=lambda: results.append(client.post("/v1/classify", content=body)))
        second = threading.Thread(target=lambda: results.append(client.post("/v1/classify", content=body)))
        results: list = []
        first.start()
        assert recording.entered.wait(30)  # the worker is busy with the first request
        second.start()
        deadline = time.monotonic() + 30
        while batcher.queue.qsize() < 1:  # the second one waits in the queue, which is now full
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = client.post("/v1/classify", content=body)
        assert_error(response, 503, "overloaded", "busy")
        assert response.headers["retry-after"] == "1"
        recording.release.set()
        first.join(30)
        second.join(30)
        assert [r.status_code for r in results] == [200, 200]
        metrics = client.get("/metrics").text
    assert "audioclf_queue_rejections_total 1" in metrics
    assert 'audioclf_requests_total{method="POST",path="/v1/classify",status="503"} 1' in metrics


# --- metrics and logs ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics_count_requests_latency_and_batches(classifier):
    with running(classifier, max_wait_ms=0) as client:
        for _ in range(3):
            client.post("/v1/classify", content=wav_bytes(clip("low")))
        client.post("/v1/classify", content=b"not audio")
        client.get("/no/such/path")
        client.get("/also/missing")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert metric(text, 'audioclf_requests_total{method="POST",path="/v1/classify",status="200"}') == 3
    assert metric(text, 'audioclf_requests_total{method="POST",path="/v1/classify",status="415"}') == 1
    assert metric(text, 'audioclf_requests_total{method="GET",path="other",status="404"}') == 2  # one label for all
    assert metric(text, 'audioclf_request_duration_seconds_count{path="/v1/classify"}') == 4
    assert metric(text, 'audioclf_request_duration_seconds_bucket{path="/v1/classify",le="+Inf"}') == 4
    assert metric(text, 'audioclf_request_duration_seconds_sum{path="/v1/classify"}') > 0
    assert metric(text, "audioclf_batch_size_count") == 3  # the three good clips, one at a time (not the warm-up)
    assert metric(text, 'audioclf_batch_size_bucket{le="1"}') == 3
    assert metric(text, "audioclf_ready") == 1
    assert metric(text, "audioclf_queue_depth") == 0


def test_one_log_line_per_request(client, caplog):
    caplog.set_level(logging.INFO, logger="audioclf.serve")
    client.post("/v1/classify", content=wav_bytes(clip("low")))
    client.get("/v1/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "audioclf.serve"]
    assert len(lines) == 2
    assert re.fullmatch(r"POST /v1/classify 200 \d+\.\d ms", lines[0])
    assert re.fullmatch(r"GET /v1/nope 404 \d+\.\d ms", lines[1])


def test_warm_up_is_a_full_batch_of_window_long_clips_before_ready(classifier):
    """The largest batch's buffers exist before /readyz says ready, so load does not grow memory later."""
    recording = Recording(classifier)
    lengths: list[list[int]] = []
    inner_probabilities = recording.window_probabilities
    recording.window_probabilities = lambda clips: (lengths.append([len(c) for c in clips]),
                                                    inner_probabilities(clips))[1]
    with running(recording, max_batch=3):
        assert recording.batch_sizes == [3]  # only the warm-up has run
    window_samples = classifier.plan.window_samples
    assert window_samples == RATE  # the tiny tone model's 1 s window
    assert lengths[0] == [window_samples] * 3


# --- slow, vanished and excess clients ----------------------------------------------------------
# The hostile requests themselves, each with its exact answer, are the corpus in test_bad_service_inputs.py.


def asgi_post(app, receive, headers=()) -> list[dict]:
    """Run one POST /v1/classify through the app with this receive; the messages it sent."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/classify", "raw_path": b"/v1/classify",
             "root_path": "", "scheme": "http", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "headers": [(b"content-length", b"100000"), *headers]}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_body_that_stops_arriving_is_408_after_the_body_timeout(classifier):
    app = create_app(classifier, ServeSettings(body_timeout_seconds=0.3))
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls < 3:
            return {"type": "http.request", "body": b"\0" * 100, "more_body": True}
        await asyncio.Event().wait()  # the client stops sending

    started = time.monotonic()
    sent = asgi_post(app, receive)
    assert 0.3 <= time.monotonic() - started < 2
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "body_timeout" and "--body-timeout-seconds" in error["message"]


@pytest.mark.parametrize("content_type", [b"audio/wav", b"multipart/form-data; boundary=xyz"])
def test_a_client_that_leaves_mid_body_is_a_499_on_one_line_not_a_500(classifier, caplog, content_type):
    app = create_app(classifier, ServeSettings())
    messages = iter([{"type": "http.request", "body": b'--xyz\r\nContent-Disposition: form-data; name="file"',
                      "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    caplog.set_level(logging.INFO)
    sent = asgi_post(app, receive, [(b"content-type", content_type)])
    assert sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_disconnected"
    records = [r for r in caplog.records if r.name.startswith(("audioclf", "uvicorn"))]
    assert [r.getMessage().split(" ", 2)[:2] for r in records] == [["POST", "/v1/classify"]]
    assert records[0].levelno == logging.INFO and records[0].exc_info is None
    assert re.fullmatch(r"POST /v1/classify 499 \d+\.\d ms \(the client closed the connection\)", records[0].getMessage())
    assert 'path="/v1/classify",status="499"} 1' in app.state.metrics.render(0, True)
    assert 'status="500"' not in app.state.metrics.render(0, True)


def test_the_connection_counts_from_the_protocol_decide_the_503(classifier):
    app = create_app(classifier, ServeSettings())
    with TestClient(app) as client:
        for open_now, status in ((4, 200), (5, 503)):
            scope_extension = {CONNECTIONS_EXTENSION: {"open": open_now, "max": 4}}
            sent: list[dict] = []

            async def send(message):
                sent.append(message)

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": "/healthz", "raw_path": b"/healthz",
                     "root_path": "", "scheme": "http", "query_string": b"", "server": ("127.0.0.1", 8000),
                     "client": ("127.0.0.1", 5000), "headers": [], "extensions": scope_extension}
            client.portal.call(app, scope, receive, send)
            assert sent[0]["status"] == status
        assert json.loads(sent[1]["body"])["error"]["code"] == "too_many_connections"
        assert dict(sent[0]["headers"])[b"retry-after"] == b"1"


def test_uvicorn_runs_with_every_connection_setting(classifier):
    settings = ServeSettings(host="::1", port=9001, keep_alive_seconds=2.5, max_connections=40, max_header_kb=8,
                             header_timeout_seconds=3)
    app = create_app(classifier, settings)
    config = uvicorn.Config(app, **uvicorn_options(app, settings))
    assert (config.host, config.port) == ("::1", 9001)
    assert (config.timeout_keep_alive, config.limit_concurrency, config.h11_max_incomplete_event_size) == (2.5, 40, 8192)
    assert config.http.func is GuardedH11Protocol and config.ws == "none"
    assert config.http.keywords == {"metrics": app.state.metrics, "header_timeout_seconds": 3}


def test_slow_header_clients_are_cut_off_and_normal_requests_go_on(classifier):
    """Issue 13's attack in miniature, over real sockets: more half-sent heads than --max-connections. While they
    are held, a request gets the 503; within --header-timeout-seconds each is answered 408 and closed; then the
    server answers normally."""
    timeout = 1.0
    with live_server(classifier, header_timeout_seconds=timeout, max_connections=20) as server:
        slow = [server.connect() for _ in range(30)]
        for sock in slow:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Len")
        started = time.monotonic()
        with httpx.Client(trust_env=False, timeout=10) as client:
            response = client.get(f"{server.url}/healthz")
            assert_error(response, 503, "too_many_connections", "--max-connections")
            for sock in slow:
                answer = read_response(sock, wait_seconds=timeout + 5)
                assert answer.closed and answer.status == 408 and answer.json()["error"]["code"] == "header_timeout"
                sock.close()
            assert time.monotonic() - started < timeout + 2
            samples = clip("high", seed=12)
            response = client.post(f"{server.url}/v1/classify", content=wav_bytes(samples))
            assert response.status_code == 200, response.text
            assert_same_predictions(response.json()["predictions"], expected(classifier, samples, 3))
            assert metric(client.get(f"{server.url}/metrics").text,
                          'audioclf_connections_refused_total{reason="header_timeout"}') == 30


def test_a_kept_alive_connection_serves_requests_then_closes_when_idle(classifier):
    with live_server(classifier, keep_alive_seconds=0.5, header_timeout_seconds=5) as server:
        sock = server.connect()
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while not data.endswith(b'{"status":"ok"}'):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 ")
        answer = read_response(sock, wait_seconds=5)
        assert answer.closed and answer.status is None and answer.seconds < 2  # idle: closed, nothing said
        sock.close()


def test_a_client_that_leaves_mid_request_is_logged_once_and_counted_499(classifier, caplog):
    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn.error").addHandler(caplog.handler)  # uvicorn's logger does not reach the root's
    try:
        with live_server(classifier) as server:
            for _ in range(5):
                sock = server.connect()
                sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 1000)
                time.sleep(0.05)
                sock.close()
            deadline = time.monotonic() + 10
            while len(server.answers) < 5:
                assert time.monotonic() < deadline, server.answers
                time.sleep(0.02)
            with httpx.Client(trust_env=False, timeout=10) as client:
                text = client.get(f"{server.url}/metrics").text
    finally:
        logging.getLogger("uvicorn.error").removeHandler(caplog.handler)
    assert server.answers[:5] == [(499, "client_disconnected")] * 5  # then /metrics
    assert metric(text, 'audioclf_requests_total{method="POST",path="/v1/classify",status="499"}') == 5
    assert 'status="500"' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    lines = [r.getMessage() for r in caplog.records if r.name == "audioclf.serve" and "/v1/classify" in r.getMessage()]
    assert len(lines) == 5  # one line per request, and no traceback anywhere
    assert all(re.fullmatch(r"POST /v1/classify 499 \d+\.\d ms \(the client closed the connection\)", x) for x in lines)
