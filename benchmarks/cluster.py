"""Issue 14's benchmark: the single-process server against `imagegen serve --cluster` with 1 and 2 engine replicas,
and how many pipeline loads the warm-recipe preference saves.

    python benchmarks/cluster.py [--rounds 6]

Throughput: 16 clients at once, one digits image each (OpenAI API), `--rounds` rounds after one warm-up round;
images per second, median over the rounds. Each server in turn on this machine, one torch thread per engine
(`--threads 1`; the replicas reserve one CPU each), the cluster's job store a PostgreSQL started here.

Loads: two workers share a PostgreSQL queue of 32 jobs of two recipes, mixed at random; each worker's engine holds
one pipeline, and loading the other costs a load. Counted with the preference for loaded recipes (the cluster's
default) and without it. (Scripted engines: the policy is measured, not the model.)
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tables import print_rows

TESTS = Path(__file__).resolve().parent.parent / "tests"
CLIENTS = 16


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds of 16 images per server (6)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import httpx
    import psycopg
    from postgres_server import PostgresServer
    from server.conftest import free_port, start_server, stop_server

    database = PostgresServer()
    database.start()
    rates: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="imagegen-cluster-") as folder:
            single = start_server(Path(folder) / "single", dict(os.environ), "--threads", "1", api_key=None)
            try:
                rates["single process"] = measure(httpx, single.url, args.rounds)
            finally:
                stop_server(single)
            for replicas in (1, 2):
                name = f"replicas{replicas}"
                with psycopg.connect(database.url, autocommit=True) as connection:
                    connection.execute(f"CREATE DATABASE {name}")
                port = free_port()
                url = database.url.rsplit("/", 1)[0] + f"/{name}"
                ray_temp = tempfile.mkdtemp(prefix="igray-")
                cluster = subprocess.Popen(
                    [sys.executable, "-m", "imagegen.cli", "serve", "--cluster", "--replicas", str(replicas), "--db",
                     url, "--port", str(port), "--data-dir", str(Path(folder) / name), "--device", "cpu",
                     "--threads", "1"], env={**os.environ, "IMAGEGEN_RAY_TEMP": ray_temp},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_ready(httpx, f"http://127.0.0.1:{port}", cluster)
                    rates[f"--cluster --replicas {replicas}"] = measure(httpx, f"http://127.0.0.1:{port}", args.rounds)
                finally:
                    cluster.send_signal(signal.SIGINT)
                    cluster.wait(timeout=120)
        loads = {preference: count_loads(database, preference) for preference in (True, False)}
    finally:
        database.stop()
        database.remove()
    single_rate = statistics.median(rates["single process"])
    one = statistics.median(rates["--cluster --replicas 1"])
    print(f"digits, {CLIENTS} clients at once, {args.rounds} rounds, {os.cpu_count()} cores, one torch thread per "
          "engine")
    print_rows([("server", "images per s (median)", "vs single process", "vs 1 replica")] + [
        (name, f"{statistics.median(values):.1f}", f"{statistics.median(values) / single_rate:.2f}",
         f"{statistics.median(values) / one:.2f}") for name, values in rates.items()])
    print()
    print_rows([("two workers, 32 mixed jobs of two recipes", "pipeline loads"),
                ("preferring loaded recipes (default)", str(loads[True])),
                ("queue order only", str(loads[False]))])
    return 0


def measure(httpx, url: str, rounds: int) -> list[float]:  # noqa: ANN001 - the httpx module
    with httpx.Client(base_url=url, timeout=300) as client:
        def generate(seed: int) -> None:
            response = client.post("/v1/images/generations", json={"model": "digits", "prompt": str(seed % 10),
                                                                    "seed": seed})
            response.raise_for_status()

        rates = []
        for round_index in range(rounds + 1):
            started = time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(generate, range(round_index * CLIENTS, (round_index + 1) * CLIENTS)))
            if round_index:  # the first round loads the models
                rates.append(CLIENTS / (time.perf_counter() - started))
        return rates


def wait_ready(httpx, url: str, process: subprocess.Popen) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the cluster exited")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the cluster did not become ready in 180 s")


class OnePipelineEngine:
    """Holds one recipe's pipeline; running another recipe's job loads it first (counted)."""

    def __init__(self) -> None:
        self.loaded: str | None = None
        self.loads = 0
        self.lock = threading.Lock()

    @staticmethod
    def batch_key(request) -> str:  # noqa: ANN001 - a GenerationRequest
        return request.model

    def is_loaded(self, request) -> bool:  # noqa: ANN001
        return request.model == self.loaded

    def generate_many(self, requests, *, on_step, cancel, on_preview=None):  # noqa: ANN001, ANN201
        from server.test_queue import ScriptedOutput

        if requests[0].model != self.loaded:
            self.loaded, self.loads = requests[0].model, self.loads + 1
            time.sleep(0.05)
        time.sleep(0.01)
        on_step(1, 1)
        return [[ScriptedOutput(request.seed, request.prompt)] for request in requests]


def count_loads(database, preference: bool) -> int:  # noqa: ANN001 - a PostgresServer
    import psycopg

    from imagegen.request import GenerationRequest
    from imagegen.server.metrics import Metrics
    from imagegen.server.store import open_store
    from imagegen.server.worker import Worker

    name = f"loads_{'preferred' if preference else 'ordered'}"
    with psycopg.connect(database.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    url = database.url.rsplit("/", 1)[0] + f"/{name}"
    with tempfile.TemporaryDirectory() as folder:
        api = open_store(url, Path(folder))
        recipes = random.Random(0).choices("ab", k=32)  # a mixed queue, the same for both runs
        for seed, recipe in enumerate(recipes):
            api.add(GenerationRequest(prompt="p", recipe="digits", seed=seed, model=recipe))
        engines = [OnePipelineEngine() for _ in range(2)]
        workers = []
        for index, engine in enumerate(engines):
            if not preference:
                engine.is_loaded = lambda request: False
            (Path(folder) / "images").mkdir(exist_ok=True)
            workers.append(Worker(engine, open_store(url, Path(folder)), Path(folder) / "images", Metrics(),
                                  max_batch=4, idle_wait=0.02, worker_id=f"w{index}"))
            workers[-1].start()
        while api.counts()["done"] < 32:
            time.sleep(0.05)
        for worker in workers:
            worker.shutdown(grace=0)
            worker.store.close()
        api.close()
    return sum(engine.loads for engine in engines)


if __name__ == "__main__":
    sys.exit(main())
