"""What `imagegen serve` adds around the engine, measured side by side in one run (issue 13's targets):

    python benchmarks/server_overhead.py [--rounds 32] [--threads N]

All on the built-in `digits` model (no download), the server on 127.0.0.1:
  engine 1      Engine.generate of one image, in this process: the time a job cannot go below
  server 1      one client, OpenAI POST /v1/images/generations (waits, base64 PNG back), one after another
  engine 4      Engine.generate_many of 4 one-image requests (the server's --max-batch 4), each image saved as the
                server saves it: images per second
  server 16     16 clients at once, one image each: images per second (`--rounds` / 4 rounds of 16)
  enqueue 64    64 clients, native POST /v1/jobs (202 once the job is on disk), latency per request: "burst", all
                64 at once (queueing for the one core the HTTP side has: p50 is half the burst's service time);
                "steady", each client submitting every 2 s at its own phase (~32 jobs/s, under the worker's rate)
The engine and the server use the same torch thread count (`--threads`, default the server's own default), and
take turns (an engine image, then a server image; an engine round, then a server round): each ratio is the median
of the paired ratios, so that a neighbour's load on a shared machine weighs on both sides alike.
Targets: server 1 within 10% (or 5 ms) of engine 1; server 16 at >= 90% of engine 4's images per second;
enqueue p50 under 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tables import print_rows

TESTS = Path(__file__).resolve().parent.parent / "tests"
ENQUEUE_CLIENTS = 64
CONCURRENT_CLIENTS = 16
STEADY_PERIOD_S, STEADY_ROUNDS = 2.0, 4  # 64 clients: about 32 jobs a second for 8 s


def main() -> int:
    from imagegen import settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=32, help="images per case (32)")
    parser.add_argument("--threads", type=int, default=settings.server_threads(), help="torch threads (both sides)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import httpx
    from server.conftest import start_server, stop_server

    from imagegen.engine import Engine, EngineOptions

    engine = Engine(EngineOptions(device="cpu", threads=args.threads))
    engine_one(engine, 0)  # loads the model: not timed
    with tempfile.TemporaryDirectory(prefix="imagegen-overhead-") as folder:
        server = start_server(Path(folder) / "data", dict(os.environ), "--threads", str(args.threads),
                              api_key=None)
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                generate(client, 0)  # loads the model: not timed
                # Interleaved, engine then server, so that a neighbour's load on the machine falls on both.
                one = [(engine_one(engine, seed), generate(client, seed)) for seed in range(1, args.rounds + 1)]
                batches = [(engine_batch(engine, first), server_batch(client, first))
                           for first in range(0, args.rounds * 4, CONCURRENT_CLIENTS)]
                with ThreadPoolExecutor(ENQUEUE_CLIENTS) as pool:
                    burst = list(pool.map(lambda seed: submit(client, seed), range(ENQUEUE_CLIENTS)))
                    wait_idle(client)
                    steady = [latency for latencies in pool.map(lambda index: steady_client(client, index),
                                                                range(ENQUEUE_CLIENTS)) for latency in latencies]
        finally:
            stop_server(server)
    engine_s, server_s = (statistics.median(times) for times in zip(*one))
    one_ratio = statistics.median(served / alone for alone, served in one)
    engine_rate, server_rate = (statistics.median(rates) for rates in zip(*batches))
    batch_ratio = statistics.median(served / alone for alone, served in batches)
    print(f"digits, {args.threads} torch thread(s), {args.rounds} rounds, {os.cpu_count()} cores")
    print_rows([
        ("case", "measure", "value", "target"),
        ("engine 1", "s per image (median)", f"{engine_s:.4f}", ""),
        ("server 1", "s per image (median)", f"{server_s:.4f}", ""),
        ("server 1 / engine 1", "median of paired ratios", f"{one_ratio:.2f}x", "<= 1.10x (or +5 ms)"),
        ("engine 4", "images per s (median)", f"{engine_rate:.1f}", ""),
        ("server 16", "images per s (median)", f"{server_rate:.1f}", ""),
        ("server 16 / engine 4", "median of paired ratios", f"{batch_ratio:.2f}", ">= 0.90"),
        ("enqueue 64 burst", "ms p50 / p90 / max", percentiles(burst), ""),
        ("enqueue 64 steady", "ms p50 / p90 / max", percentiles(steady), "p50 < 10"),
    ])
    return 0


def engine_one(engine, seed: int) -> float:  # noqa: ANN001 - an Engine
    """Seconds for one image, saved as the server saves its result."""
    from imagegen.request import GenerationRequest

    started = time.perf_counter()
    [image] = engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=seed))
    image.save(Path(tempfile.gettempdir()) / "imagegen-overhead.png")
    return time.perf_counter() - started


def engine_batch(engine, first: int) -> float:  # noqa: ANN001
    """Images per second for CONCURRENT_CLIENTS images in calls of 4 (the server's --max-batch), each saved."""
    from imagegen.request import GenerationRequest

    started = time.perf_counter()
    for start in range(first, first + CONCURRENT_CLIENTS, 4):
        for [image] in engine.generate_many([GenerationRequest(prompt="7", recipe="digits", seed=seed)
                                             for seed in range(start, start + 4)]):
            image.save(Path(tempfile.gettempdir()) / "imagegen-overhead.png")
    return CONCURRENT_CLIENTS / (time.perf_counter() - started)


def server_batch(client, first: int) -> float:  # noqa: ANN001 - an httpx.Client
    """Images per second for CONCURRENT_CLIENTS clients at once, one image each."""
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
        list(pool.map(lambda seed: generate(client, seed), range(first, first + CONCURRENT_CLIENTS)))
    return CONCURRENT_CLIENTS / (time.perf_counter() - started)


def percentiles(seconds: list[float]) -> str:
    ms = sorted(value * 1000 for value in seconds)
    return f"{ms[len(ms) // 2]:.1f} / {ms[int(len(ms) * 0.9)]:.1f} / {ms[-1]:.1f}"


def wait_idle(client) -> None:  # noqa: ANN001 - an httpx.Client
    """Until the burst's jobs have run: the steady clients then meet an idle queue."""
    while client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["state"] != "done":
        time.sleep(0.1)


def steady_client(client, index: int) -> list[float]:  # noqa: ANN001
    """One of 64 clients submitting every STEADY_PERIOD_S at a phase of its own."""
    latencies = []
    next_at = time.perf_counter() + STEADY_PERIOD_S * index / ENQUEUE_CLIENTS
    for round_index in range(STEADY_ROUNDS):
        time.sleep(max(0.0, next_at - time.perf_counter()))
        latencies.append(submit(client, 1000 + index * STEADY_ROUNDS + round_index))
        next_at += STEADY_PERIOD_S
    return latencies


def generate(client, seed: int) -> float:  # noqa: ANN001 - an httpx.Client
    started = time.perf_counter()
    response = client.post("/v1/images/generations", json={"model": "digits", "prompt": "7", "seed": seed,
                                                            "response_format": "b64_json"})
    response.raise_for_status()
    return time.perf_counter() - started


def submit(client, seed: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    response = client.post("/v1/jobs", json={"recipe": "digits", "prompt": "7", "seed": seed})
    assert response.status_code == 202, response.text
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
