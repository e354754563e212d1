"""Throughput and latency of `audioclf serve`, micro-batching on vs `--max-batch 1`, side by side.

Run by hand (not a test), on loopback only:

    python bench/serve.py audioclf-demo-model                 # demo clips, 1/8/32 clients, 30 s each
    python bench/serve.py MODEL --seconds 5 --clients 1,8     # a quick look

For each mode a fresh server is started on 127.0.0.1 and a free port; every client count then runs for `--seconds`
(each client loops until the deadline, so the run stops by itself). Reports requests/s, p50/p95/p99 latency, the
answers by status class (2xx/4xx/5xx, and requests that got no answer), and the server's RSS before and after the
mode's runs. Then the micro-batching server gets a burst of decompression bombs (a ~335 KB silent FLAC that declares
60 s of 8 channels at 655,350 Hz, 315 million samples; generated here) and the bench reports its peak RSS growth.
Targets: issue 6's (at least 1.5x the requests/s with micro-batching at 8 clients, zero errors, RSS growth under
50 MB) and issue 13's (no 5xx at 8 and 32 clients, peak RSS growth under 100 MB during the bomb burst).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import numpy as np

TARGET_SPEEDUP = 1.5  # requests/s with micro-batching over --max-batch 1, at TARGET_CLIENTS
TARGET_CLIENTS = 8
MAX_RSS_GROWTH_MB = 50
NO_5XX_CLIENTS = (8, 32)  # issue 13: client counts at which the server must answer no 5xx
MAX_BOMB_RSS_GROWTH_MB = 100  # issue 13: peak RSS growth during the decompression-bomb burst
# The bomb: tiny as FLAC (silence is a constant per frame), 315 million samples decoded.
BOMB_SAMPLING_RATE = 655_350  # Hz, the highest rate a FLAC frame header can state
BOMB_CHANNELS = 8
BOMB_SECONDS = 60
RSS_SAMPLE_SECONDS = 0.02  # how often the server's RSS is read during the burst, to catch its peak
BOMB_TIMEOUT_SECONDS = 600  # a bomb may take long to decode on a busy machine; slowness is not what is measured
READY_TIMEOUT_SECONDS = 300
REQUEST_TIMEOUT_SECONDS = 60
DEMO_CLIPS = 16  # demo clips sent round-robin, one per label-and-voice, so requests differ


@dataclass(frozen=True)
class Run:
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: tuple[float, ...]
    statuses: dict[str, int]  # answers by status class ("2xx", "4xx", "5xx") and "no answer" (transport errors)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def demo_clips(count: int) -> list[bytes]:
    from audioclf.data import demo_manifest

    manifest = demo_manifest()
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // count)
    return [(manifest.parent / row["path"]).read_bytes() for row in rows[::step][:count]]


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def decompression_bomb() -> bytes:
    """A silent FLAC that declares BOMB_SECONDS of BOMB_CHANNELS channels at BOMB_SAMPLING_RATE (about 335 KiB)."""
    import soundfile as sf

    buffer = io.BytesIO()
    second = np.zeros((BOMB_SAMPLING_RATE, BOMB_CHANNELS), dtype=np.int16)
    with sf.SoundFile(buffer, "w", samplerate=BOMB_SAMPLING_RATE, channels=BOMB_CHANNELS, format="FLAC",
                      subtype="PCM_16") as f:
        for _ in range(BOMB_SECONDS):  # a second at a time: the whole recording would be 5 GB of int16
            f.write(second)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """`audioclf serve` in a subprocess on loopback, stopped on exit."""

    def __init__(self, model_dir: str, max_batch: int, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "audioclf.cli", "serve", model_dir, "--host", "127.0.0.1",
                        "--port", str(self.port), "--max-batch", str(max_batch), *extra]

    def __enter__(self) -> Self:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(trust_env=False, timeout=5) as client:  # trust_env=False: never through a proxy
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(f"the server exited with {self.process.returncode}: {' '.join(self.command)}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not become ready")
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def load(url: str, clips: list[bytes], clients: int, seconds: float) -> Run:
    """`clients` concurrent loops, each posting clips until the deadline."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def loop(first: int) -> None:
            i = first
            while time.perf_counter() < deadline:
                body = clips[i % len(clips)]
                i += 1
                sent = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/classify", files={"file": ("clip", body)})
                    statuses[status_class(response.status_code)] += 1
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    statuses["no answer"] += 1
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000)

        await asyncio.gather(*(loop(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    errors = sum(statuses.values()) - len(latencies)
    return Run(clients, len(latencies), errors, elapsed, tuple(latencies), dict(statuses))


@dataclass(frozen=True)
class Burst:
    uploads: int
    statuses: dict[str, int]  # by status code, e.g. {"200": 8} or {"413": 8}; "no answer" for transport errors
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    seconds: float


def bomb_burst(server: Server, bomb: bytes, uploads: int, clients: int) -> Burst:
    """`uploads` posts of the bomb from `clients` concurrent clients, the server's RSS sampled throughout."""
    pid = server.process.pid
    rss_before = rss_mb(pid)
    peak = rss_before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(RSS_SAMPLE_SECONDS):
            peak = max(peak, rss_mb(pid))

    async def post_all() -> Counter[str]:
        statuses: Counter[str] = Counter()
        remaining = iter(range(uploads))
        async with httpx.AsyncClient(trust_env=False, timeout=BOMB_TIMEOUT_SECONDS) as client:

            async def loop() -> None:
                for _ in remaining:
                    try:
                        response = await client.post(f"{server.url}/v1/classify", files={"file": ("bomb.flac", bomb)})
                        statuses[str(response.status_code)] += 1
                    except httpx.HTTPError:
                        statuses["no answer"] += 1

            await asyncio.gather(*(loop() for _ in range(clients)))
        return statuses

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        statuses = asyncio.run(post_all())
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - started
    peak = max(peak, rss_mb(pid))
    return Burst(uploads, dict(statuses), rss_before, peak, rss_mb(pid), seconds)


def bench_mode(model_dir: str, max_batch: int, extra: list[str], clips: list[bytes], client_counts: list[int],
               seconds: float, bomb: tuple[bytes, int, int] | None = None
               ) -> tuple[list[Run], float, float, Burst | None]:
    """The runs at each client count, the server's RSS before and after them, and then, given (bomb, uploads,
    clients), the bomb burst on the same server."""
    with Server(model_dir, max_batch, extra) as server:
        asyncio.run(load(server.url, clips, 1, min(2.0, seconds)))  # settle allocations before measuring RSS
        rss_before = rss_mb(server.process.pid)
        runs = []
        for clients in client_counts:
            runs.append(asyncio.run(load(server.url, clips, clients, seconds)))
            print(f"  max-batch {max_batch}, {clients} clients: {runs[-1].requests_per_second:.1f} req/s, "
                  f"{format_statuses(runs[-1].statuses)}", flush=True)
        rss_after = rss_mb(server.process.pid)
        burst = None
        if bomb is not None:
            burst = bomb_burst(server, *bomb)
            print(f"  bomb burst: {format_statuses(burst.statuses)} in {burst.seconds:.1f} s", flush=True)
    return runs, rss_before, rss_after, burst


def format_statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in sorted(statuses.items())) or "no requests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="A trained model directory, e.g. the demo model.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Duration of each client count, per mode.")
    parser.add_argument("--clients", default="1,8,32", help="Comma-separated numbers of concurrent clients.")
    parser.add_argument("--max-batch", type=int, default=8, help="--max-batch of the micro-batching server.")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="--max-wait-ms of both servers.")
    parser.add_argument("--clip", action="append", type=Path, help="Audio file to send (repeatable). Default: demo clips.")
    parser.add_argument("--bomb-uploads", type=int, default=8,
                        help="Decompression bombs posted in the burst (0: no burst). Until decoding budgets such "
                             "files, each can take gigabytes while it decodes: mind a shared machine.")
    parser.add_argument("--bomb-clients", type=int, default=4, help="Concurrent clients posting the bombs.")
    args = parser.parse_args()

    clips = [p.read_bytes() for p in args.clip] if args.clip else demo_clips(DEMO_CLIPS)
    client_counts = [int(c) for c in args.clients.split(",")]
    # a queue long enough for every client, so the comparison measures throughput rather than 503s
    extra = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(64, 2 * max(client_counts)))]
    print(f"{len(clips)} clips, {args.seconds:g} s per client count, clients {client_counts}")
    bomb = None
    if args.bomb_uploads > 0:
        bomb_bytes = decompression_bomb()
        print(f"bomb: {len(bomb_bytes) / 1024:.0f} KiB FLAC declaring {BOMB_SECONDS} s x {BOMB_CHANNELS} channels at "
              f"{BOMB_SAMPLING_RATE} Hz; {args.bomb_uploads} uploads from {args.bomb_clients} clients")
        bomb = (bomb_bytes, args.bomb_uploads, args.bomb_clients)
    batched = bench_mode(args.model_dir, args.max_batch, extra, clips, client_counts, args.seconds, bomb)
    single = bench_mode(args.model_dir, 1, extra, clips, client_counts, args.seconds)

    header = (f"{'clients':>7} | {'mode':<12} | {'req/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | "
              f"{'2xx':>6} | {'4xx':>4} | {'5xx':>4} | {'no answer':>9}")
    print("\n" + header + "\n" + "-" * len(header))
    for b, s in zip(batched[0], single[0]):
        for name, run in ((f"max-batch {args.max_batch}", b), ("max-batch 1", s)):
            counts = [run.statuses.get(k, 0) for k in ("2xx", "4xx", "5xx", "no answer")]
            print(f"{run.clients:>7} | {name:<12} | {run.requests_per_second:>7.1f} | {run.percentile_ms(50):>7.1f} | "
                  f"{run.percentile_ms(95):>7.1f} | {run.percentile_ms(99):>7.1f} | {counts[0]:>6} | {counts[1]:>4} | "
                  f"{counts[2]:>4} | {counts[3]:>9}")
        print(f"{'':>7} | {'ratio':<12} | {b.requests_per_second / max(s.requests_per_second, 1e-9):>6.2f}x |")
    for name, (_, before, after, _) in ((f"max-batch {args.max_batch}", batched), ("max-batch 1", single)):
        print(f"RSS {name}: {before:.0f} MB before, {after:.0f} MB after ({after - before:+.0f} MB)")
    burst = batched[3]
    if burst is not None:
        print(f"RSS bomb burst ({burst.uploads} uploads, answers {format_statuses(burst.statuses)}, "
              f"{burst.seconds:.1f} s): {burst.rss_before_mb:.0f} MB before, {burst.rss_peak_mb:.0f} MB at the peak "
              f"({burst.rss_peak_mb - burst.rss_before_mb:+.0f} MB), {burst.rss_after_mb:.0f} MB after")

    by_clients = {b.clients: (b, s) for b, s in zip(batched[0], single[0])}
    checks = []
    if TARGET_CLIENTS in by_clients:
        b, s = by_clients[TARGET_CLIENTS]
        speedup = b.requests_per_second / max(s.requests_per_second, 1e-9)
        checks.append((f"speed-up at {TARGET_CLIENTS} clients {speedup:.2f}x >= {TARGET_SPEEDUP}x", speedup >= TARGET_SPEEDUP))
    errors = sum(r.errors for r in batched[0] + single[0])
    checks.append((f"errors {errors} == 0", errors == 0))
    for clients in NO_5XX_CLIENTS:
        if clients in by_clients:
            server_errors = sum(run.statuses.get("5xx", 0) for run in by_clients[clients])
            checks.append((f"5xx at {clients} clients {server_errors} == 0", server_errors == 0))
    growth = max(batched[2] - batched[1], single[2] - single[1])
    checks.append((f"RSS growth {growth:.0f} MB < {MAX_RSS_GROWTH_MB} MB", growth < MAX_RSS_GROWTH_MB))
    if burst is not None:
        bomb_growth = burst.rss_peak_mb - burst.rss_before_mb
        checks.append((f"bomb burst peak RSS growth {bomb_growth:.0f} MB < {MAX_BOMB_RSS_GROWTH_MB} MB",
                       bomb_growth < MAX_BOMB_RSS_GROWTH_MB))
        bomb_5xx = sum(n for status, n in burst.statuses.items() if status.startswith("5"))
        checks.append((f"bomb burst 5xx {bomb_5xx} == 0", bomb_5xx == 0))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {text}")
    sys.exit(0 if all(ok for _, ok in checks) else 1)


if __name__ == "__main__":
    main()
