"""What `imagegen serve` adds around the engine, measured side by side in one run (issue 13's targets):

    python benchmarks/server_overhead.py [--rounds 30] [--threads N]

All on the built-in `digits` model (no download), the server on 127.0.0.1:
  engine 1      Engine.generate of one image, in this process: the time a job cannot go below
  server 1      one client, OpenAI POST /v1/images/generations (waits, base64 PNG back), one after another
  engine 4      Engine.generate_many of 4 one-image requests (the server's --max-batch 4): images per second
  server 16     16 clients at once, one image each, `--rounds` / 4 rounds: images per second
  enqueue 64    64 clients at once, native POST /v1/jobs (202 once the job is on disk): latency per request
The engine and the server use the same torch thread count (`--threads`, default the server's own default).
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


def main() -> int:
    from imagegen import settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="images per case (30)")
    parser.add_argument("--threads", type=int, default=settings.server_threads(), help="torch threads (both sides)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import httpx
    from server.conftest import start_server, stop_server

    engine_one, engine_batch = measure_engine(args.rounds, args.threads)
    with tempfile.TemporaryDirectory(prefix="imagegen-overhead-") as folder:
        server = start_server(Path(folder) / "data", dict(os.environ), "--threads", str(args.threads),
                              api_key=None)
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                generate(client, 0)  # loads the model: not timed
                one = [generate(client, seed) for seed in range(1, args.rounds + 1)]
                started = time.perf_counter()
                with ThreadPoolExecutor(CONCURRENT_CLIENTS) as pool:
                    list(pool.map(lambda seed: generate(client, seed), range(args.rounds)))
                concurrent = args.rounds / (time.perf_counter() - started)
                with ThreadPoolExecutor(ENQUEUE_CLIENTS) as pool:
                    enqueue = list(pool.map(lambda seed: submit(client, seed), range(ENQUEUE_CLIENTS)))
        finally:
            stop_server(server)
    median_one = statistics.median(one)
    enqueue_ms = sorted(seconds * 1000 for seconds in enqueue)
    print(f"digits, {args.threads} torch thread(s), {args.rounds} images per case, {os.cpu_count()} cores")
    print_rows([
        ("case", "measure", "value", "target"),
        ("engine 1", "s per image (median)", f"{statistics.median(engine_one):.4f}", ""),
        ("server 1", "s per image (median)", f"{median_one:.4f}",
         f"<= {max(1.1 * statistics.median(engine_one), statistics.median(engine_one) + 0.005):.4f}"),
        ("server 1 / engine 1", "ratio", f"{median_one / statistics.median(engine_one):.2f}x", ""),
        ("engine 4", "images per s", f"{engine_batch:.1f}", ""),
        ("server 16", "images per s", f"{concurrent:.1f}", f">= {0.9 * engine_batch:.1f}"),
        ("server 16 / engine 4", "ratio", f"{concurrent / engine_batch:.2f}", ""),
        ("enqueue 64", "ms p50 / p90 / max", f"{enqueue_ms[len(enqueue_ms) // 2]:.1f} / "
         f"{enqueue_ms[int(len(enqueue_ms) * 0.9)]:.1f} / {enqueue_ms[-1]:.1f}", "p50 < 10"),
    ])
    return 0


def measure_engine(rounds: int, threads: int) -> tuple[list[float], float]:
    """Seconds per image one at a time, and images per second four at a time (one call)."""
    from imagegen.engine import Engine, EngineOptions
    from imagegen.request import GenerationRequest

    engine = Engine(EngineOptions(device="cpu", threads=threads))
    engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=0))
    one = []
    for seed in range(1, rounds + 1):
        started = time.perf_counter()
        [image] = engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=seed))
        image.image.save(Path(tempfile.gettempdir()) / "imagegen-overhead.png")  # as the server writes its result
        one.append(time.perf_counter() - started)
    started = time.perf_counter()
    for first in range(0, rounds, 4):
        engine.generate_many([GenerationRequest(prompt="7", recipe="digits", seed=seed)
                              for seed in range(first, first + 4)])
    return one, (rounds // 4 * 4) / (time.perf_counter() - started)


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
