"""torch's threads and OpenMP's wait policy for the built-in model, on an idle and on a busy machine.

    python benchmarks/threads.py [--images 20]

Each configuration runs in its own process (OMP_WAIT_POLICY is read when torch loads): the digits recipe through
imagegen's engine, one image at a time, `--images` images after one untimed. "busy" starts one process per core
spinning in a loop beside it (another job on a shared machine). Reported: the median seconds per image. OpenMP's
default lets waiting threads spin: on a busy machine they compete with the work they wait for.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

from tables import print_rows

POLICIES = ("default", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="timed images per configuration (20)")
    parser.add_argument("--measure", nargs=2, metavar=("THREADS", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(int(args.measure[0]), int(args.measure[1]))))
        return 0
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, max(1, cores - 1), cores})
    rows = [("machine", "OMP_WAIT_POLICY", "threads", "s/image (median)", "vs 1 thread, default")]
    for load in ("idle", "busy"):
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(cores if load == "busy" else 0)]
        for spinner in spinners:
            spinner.start()
        try:
            results = {(policy, threads): _child(policy, threads, args.images)
                       for policy in POLICIES for threads in thread_counts}
        finally:
            for spinner in spinners:
                spinner.terminate()
        base = results[("default", 1)]
        rows += [(load, policy, str(threads), f"{seconds:.3f}", f"{seconds / base:.2f}x")
                 for (policy, threads), seconds in results.items()]
    print(f"{cores} cores; digits recipe, 256x256, 15 steps")
    print_rows(rows)
    return 0


def _child(policy: str, threads: int, images: int) -> float:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    output = subprocess.run([sys.executable, __file__, "--measure", str(threads), str(images)], env=env,
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(threads: int, images: int) -> float:
    import torch

    from imagegen.engine import Engine, EngineOptions
    from imagegen.request import GenerationRequest

    torch.set_num_threads(threads)
    engine = Engine(EngineOptions(device="cpu"))
    engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=0))
    seconds = []
    for seed in range(1, images + 1):
        started = time.perf_counter()
        engine.generate(GenerationRequest(prompt="7", recipe="digits", seed=seed))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def _spin() -> None:
    while True:
        pass


if __name__ == "__main__":
    sys.exit(main())
