"""Throughput of `imagegen serve` for a burst of concurrent requests: batched (--max-batch N) against one job per
call (--max-batch 1), two real server processes measured side by side, rounds interleaved:

    OMP_NUM_THREADS=1 python benchmarks/server_batching.py [--requests 16] [--max-batch 4] [--rounds 3]
        [--scale 1] [--steps 1] [--side 64] [--device cpu] [--out benchmarks/results/server_batching.json]

The model is the tiny random-weight sdxl-turbo of tests/tiny_models.py (widened by ``--scale``), built into a
temporary Hugging Face cache. Each round submits `--requests` jobs at once through the native API (one thread
per request; different prompts and seeds, all else equal, so that the worker may batch them) and reads the
server's own timestamps: seconds from the first job's creation to the last job's end, images per second, and
the batch sizes the worker formed (jobs of one call share their `started` time). Each server first answers one
untimed burst, so that loading the pipeline is not measured.

On a CPU the gain comes from sharing per-call work (text encoding, the scheduler loop, VAE calls, Python
overhead) across a batch; on a GPU a batch also fills the device, which a single small image leaves idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"
RESULTS = Path(__file__).resolve().parent / "results" / "server_batching.json"
FINISHED = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Round:
    max_batch: int
    images: int
    seconds: float  # first job created -> last job finished, by the server's clock
    batch_sizes: list[int]  # jobs per call, in the order the calls started

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per round (16)")
    parser.add_argument("--max-batch", type=int, default=4, help="the batched server's --max-batch (4)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per server, interleaved (3)")
    parser.add_argument("--scale", type=int, default=1, help="widen the tiny models (tests/tiny_models.py) (1)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (sdxl-turbo's default: 1)")
    parser.add_argument("--side", type=int, default=64, help="image width and height (64)")
    parser.add_argument("--device", default="cpu", help="the servers' --device (cpu)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results ({RESULTS.name})")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(TESTS))
    from server.conftest import start_server, stop_server
    from tiny_models import build_hf_cache

    body = {"recipe": "sdxl-turbo", "width": args.side, "height": args.side, "num_inference_steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="imagegen-batching-") as folder:
        cache = Path(folder) / "hf_cache"
        build_hf_cache(cache, scale=args.scale)
        env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        servers = {size: start_server(Path(folder) / f"data-{size}", env, "--max-batch", str(size),
                                      "--device", args.device, api_key=None)  # the last --device given wins
                   for size in (1, args.max_batch)}
        try:
            for size, server in servers.items():
                burst(server.url, body, args.requests, max_batch=size)  # loads the pipeline: not timed
            rounds = [burst(server.url, body, args.requests, max_batch=size)
                      for _ in range(args.rounds) for size, server in servers.items()]
        finally:
            for server in servers.values():
                stop_server(server)

    summary = {size: statistics.median(r.images_per_second for r in rounds if r.max_batch == size)
               for size in servers}
    print_table(rounds, summary, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": " ".join(sys.argv),
                 "device": args.device, "request": body, "requests": args.requests, "scale": args.scale},
        "rounds": [{**asdict(r), "images_per_second": r.images_per_second} for r in rounds],
        "median_images_per_second": {str(size): value for size, value in summary.items()},
        "speedup": summary[args.max_batch] / summary[1],
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def burst(url: str, body: dict, count: int, *, max_batch: int) -> Round:
    """`count` jobs submitted at once (one thread each), then followed to their end."""
    with httpx.Client(base_url=url, timeout=600) as client:
        def submit(index: int) -> str:
            response = client.post("/v1/jobs", json={**body, "prompt": f"a photo of thing {index}", "seed": index})
            response.raise_for_status()
            return response.json()["id"]

        with ThreadPoolExecutor(count) as pool:
            ids = list(pool.map(submit, range(count)))
        while True:
            jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
            if all(job["state"] in FINISHED for job in jobs):
                break
            time.sleep(0.25)  # slow polling: the client must not compete with the worker for the CPU
    failed = [job["error"] for job in jobs if job["state"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not finish: {failed[0]}")
    calls = Counter(job["started"] for job in jobs)
    return Round(max_batch, sum(len(job["images"]) for job in jobs),
                 max(job["finished"] for job in jobs) - min(job["created"] for job in jobs),
                 [calls[started] for started in sorted(calls)])


def print_table(rounds: list[Round], summary: dict[int, float], args: argparse.Namespace) -> None:
    print(f"\nsdxl-turbo (tiny, scale {args.scale}) {args.side}x{args.side}, {args.steps} step(s), "
          f"{args.requests} concurrent requests, {args.rounds} rounds per server, interleaved")
    rows = [("--max-batch", "round", "images", "seconds", "images/s", "jobs per call")]
    for index, r in enumerate(rounds):
        rows.append((str(r.max_batch), str(index // len(summary) + 1), str(r.images), f"{r.seconds:.2f}",
                     f"{r.images_per_second:.2f}", " ".join(map(str, r.batch_sizes))))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    batched, single = summary[args.max_batch], summary[1]
    print(f"\nmedian images/s: --max-batch 1 {single:.2f}, --max-batch {args.max_batch} {batched:.2f} "
          f"({batched / single:.2f}x)")


def machine() -> dict[str, object]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


if __name__ == "__main__":
    sys.exit(main())
