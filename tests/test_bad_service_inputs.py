"""Hostile requests against a real `audioclf serve` (uvicorn on loopback, as `serve` runs it), one table entry each.

Each entry makes one hostile request on raw sockets and says what the service answers: the exact status and error
code, and that the connection is closed within `closed_within_seconds` of the request's last byte. Where the client
reads an answer it is parsed from the bytes on the wire; where it leaves (or nothing reaches the app) the answer is
what the server recorded: the app's response (status and code) or the reason counted in
audioclf_connections_refused_total (status None: closed without a word). After every entry the server still
answers a normal request and has answered no 5xx it should not have.

Add a row for each new hostile input the service handles.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_serve import LiveServer, live_server, read_response, save_tiny_tone_model

from audioclf.infer import load_classifier
from audioclf.serve import LINGER_SECONDS

KEY = "corpus-key"
SETTINGS = dict(header_timeout_seconds=1.0, body_timeout_seconds=1.0, keep_alive_seconds=5.0, max_connections=8,
                max_header_kb=2, max_upload_mb=0.05, api_key=KEY)
SLACK_SECONDS = 1.5  # scheduling on a busy 2-core machine
HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: corpus\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"


@dataclass(frozen=True)
class Answer:
    status: int | None
    code: str | None
    closed_after_seconds: float


@dataclass(frozen=True)
class Hostile:
    id: str
    attack: Callable[[LiveServer], Answer]
    status: int | None
    code: str
    closed_within_seconds: float = SLACK_SECONDS


# --- ways to misbehave ---------------------------------------------------------------------------


def _answer_on_the_wire(sock: socket.socket, server: LiveServer, refused_before: dict[str, int]) -> Answer:
    response = read_response(sock, wait_seconds=10)
    sock.close()
    assert response.closed, "the server kept the connection open"
    if response.status is None:  # closed without a word: what the protocol counted says why
        refused = server.app.state.metrics.refused_connections
        reasons = [reason for reason, count in refused.items() if count > refused_before[reason]]
        return Answer(None, reasons[0] if len(reasons) == 1 else str(reasons), response.seconds)
    return Answer(response.status, response.json()["error"]["code"], response.seconds)


def sends(*parts: bytes, pause_seconds: float = 0.0) -> Callable[[LiveServer], Answer]:
    """Send the parts (pausing between them, stopping as soon as the server answers), then read until closed."""

    def attack(server: LiveServer) -> Answer:
        refused_before = dict(server.app.state.metrics.refused_connections)
        sock = server.connect()
        for i, part in enumerate(parts):
            if i and pause_seconds:
                time.sleep(pause_seconds)
            if select.select([sock], [], [], 0)[0]:  # the server has answered (or closed): stop sending
                break
            sock.sendall(part)
        return _answer_on_the_wire(sock, server, refused_before)

    return attack


def dribbles(head: bytes, every_seconds: float = 0.2) -> Callable[[LiveServer], Answer]:
    """One byte at a time, each `every_seconds` (a slow-loris client), for longer than any timeout."""
    return sends(*(head[i : i + 1] for i in range(len(head))), pause_seconds=every_seconds)


def after_one_good_request(then: bytes) -> Callable[[LiveServer], Answer]:
    """A normal request on a kept-alive connection, then `then` on the same connection."""

    def attack(server: LiveServer) -> Answer:
        refused_before = dict(server.app.state.metrics.refused_connections)
        sock = server.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: corpus\r\n\r\n")
        data = b""
        while not data.endswith(b'{"status":"ok"}'):
            data += sock.recv(65536)
        sock.sendall(then)
        return _answer_on_the_wire(sock, server, refused_before)

    return attack


def leaves_mid_body(head: bytes, body_part: bytes) -> Callable[[LiveServer], Answer]:
    """Send a head and part of the body it declares, then close: the client is gone, the app's answer is noted."""

    def attack(server: LiveServer) -> Answer:
        answered = len(server.answers)
        sock = server.connect()
        sock.sendall(head + body_part)
        time.sleep(0.1)  # the app is reading the body
        sock.close()
        closed = time.monotonic()
        deadline = closed + 10
        while len(server.answers) == answered:
            assert time.monotonic() < deadline, "the app never answered"
            time.sleep(0.01)
        status, code = server.answers[answered]
        return Answer(status, code, 0.0)

    return attack


def keeps_sending_after_its_answer(head: bytes, every_seconds: float = 0.2) -> Callable[[LiveServer], Answer]:
    """Send a head whose body is refused unread (413), then go on sending that body a few bytes at a time, as if
    to hold the connection: the answer still arrives, and the connection is closed soon after."""

    def attack(server: LiveServer) -> Answer:
        sock = server.connect()
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}}"):
            data += sock.recv(65536)
        answered = time.monotonic()
        try:
            while time.monotonic() - answered < 10:
                time.sleep(every_seconds)
                sock.sendall(b"\0" * 10)
                if select.select([sock], [], [], 0)[0] and not sock.recv(65536):
                    break  # the server's end of the connection
        except OSError:  # reset: the server closed it and more came
            pass
        sock.close()
        status_line, _, rest = data.partition(b"\r\n")
        return Answer(int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"],
                      time.monotonic() - answered)

    return attack


def holds_every_connection_then(request: bytes) -> Callable[[LiveServer], Answer]:
    """Open --max-connections idle connections, then make a request on one more."""

    def attack(server: LiveServer) -> Answer:
        idle = [server.connect() for _ in range(SETTINGS["max_connections"])]
        time.sleep(0.1)  # the server has accepted them all
        try:
            return sends(request)(server)
        finally:
            for sock in idle:
                sock.close()

    return attack


def chunked(size: int) -> bytes:
    return b"%x\r\n%s\r\n" % (size, b"\0" * size)


MULTIPART_HEAD = (HEAD + b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 50000\r\n\r\n")
MULTIPART_START = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'

CORPUS = [
    Hostile("silent-connection", sends(b""), None, "no_request",
            SETTINGS["header_timeout_seconds"] + SLACK_SECONDS),
    Hostile("half-a-header", sends(HEAD[:30]), 408, "header_timeout", SETTINGS["header_timeout_seconds"] + SLACK_SECONDS),
    Hostile("header-a-byte-at-a-time", dribbles(HEAD), 408, "header_timeout", SLACK_SECONDS),
    Hostile("half-a-header-on-a-kept-alive-connection", after_one_good_request(HEAD[:30]), 408, "header_timeout",
            SETTINGS["header_timeout_seconds"] + SLACK_SECONDS),
    Hostile("header-over-max-header-kb", sends(b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"a" * 3000), 431,
            "headers_too_large"),
    Hostile("not-http", sends(b"HELLO THERE\r\n\r\n"), 400, "bad_request"),
    Hostile("header-without-colon", sends(b"GET /healthz HTTP/1.1\r\nHost corpus\r\n\r\n"), 400, "bad_request"),
    Hostile("two-content-lengths", sends(HEAD + b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n"), 400,
            "bad_request"),
    Hostile("body-stops-arriving", sends(HEAD + b"Content-Length: 1000\r\n\r\nRIFF"), 408, "body_timeout",
            SETTINGS["body_timeout_seconds"] + SLACK_SECONDS),
    Hostile("body-a-byte-at-a-time", sends(HEAD + b"Content-Length: 1000\r\n\r\n", *[b"\0"] * 40, pause_seconds=0.2),
            408, "body_timeout", SLACK_SECONDS),
    Hostile("leaves-mid-body", leaves_mid_body(HEAD + b"Content-Length: 50000\r\n\r\n", b"RIFF" + b"\0" * 1000), 499,
            "client_disconnected"),
    Hostile("leaves-mid-multipart-body", leaves_mid_body(MULTIPART_HEAD, MULTIPART_START), 499, "client_disconnected"),
    Hostile("leaves-mid-chunked-body", leaves_mid_body(HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunked(100)), 499,
            "client_disconnected"),
    Hostile("connection-past-max-connections", holds_every_connection_then(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n"),
            503, "too_many_connections"),
    Hostile("metrics-without-the-key", sends(b"GET /metrics HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"), 401,
            "unauthorized"),
    Hostile("schema-without-the-key", sends(b"GET /openapi.json HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"),
            401, "unauthorized"),
    Hostile("content-length-over-max-upload-mb", sends(HEAD + b"Content-Length: 100000000\r\n\r\nRIFF"), 413,
            "upload_too_large"),
    Hostile("body-sent-on-after-its-413", keeps_sending_after_its_answer(HEAD + b"Content-Length: 100000000\r\n\r\n"),
            413, "upload_too_large", LINGER_SECONDS + SLACK_SECONDS),
    Hostile("chunked-body-over-max-upload-mb",
            sends(HEAD + b"Transfer-Encoding: chunked\r\n\r\n", *[chunked(16384)] * 64, pause_seconds=0.01), 413,
            "upload_too_large"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    classifier = load_classifier(save_tiny_tone_model(Path(tmp_path_factory.mktemp("corpus")) / "tiny-tones"))
    with live_server(classifier, **SETTINGS) as server:
        yield server


@pytest.mark.parametrize("hostile", CORPUS, ids=[h.id for h in CORPUS])
def test_hostile_request(server, hostile):
    answered = len(server.answers)
    answer = hostile.attack(server)
    assert (answer.status, answer.code) == (hostile.status, hostile.code)
    assert answer.closed_after_seconds < hostile.closed_within_seconds
    # the server goes on, and answered nothing else with a 5xx on the way
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert client.get(f"{server.url}/v1/labels", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    unexpected = [a for a in server.answers[answered:] if a[0] >= 500 and a != (hostile.status, hostile.code)]
    assert not unexpected


def test_every_refusal_reason_and_error_code_is_in_the_corpus():
    from audioclf.serve import CONNECTION_REFUSALS

    codes = {h.code for h in CORPUS}
    assert set(CONNECTION_REFUSALS) <= codes
    assert {"header_timeout", "body_timeout", "client_disconnected", "too_many_connections"} <= codes
