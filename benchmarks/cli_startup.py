"""How long the `imagegen` command takes to answer when it needs no model, against importing torch alone.

`imagegen --help`, `imagegen generate --help` and `imagegen recipes` must not import torch, diffusers or
transformers (cli.py imports them lazily), so they should answer in about the interpreter's own start-up
time, while anything that imports torch pays seconds first. This script times each command in fresh
processes and checks, in one more process per command, which of those libraries it imported:

    python benchmarks/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers")
COMMANDS = (["--help"], ["generate", "--help"], ["recipes"])
# Runs `imagegen.cli.main` with the arguments given after it, then names the HEAVY modules it left imported.
IMPORT_PROBE = f"""
import json, sys
from imagegen.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]), file=sys.stderr)
"""


@dataclass(frozen=True)
class Timing:
    """Wall times of one command line, in milliseconds, each run a fresh process."""

    label: str
    median_ms: float
    min_ms: float
    heavy_imports: list[str] | None  # None where the command is not imagegen's


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command, after one untimed (default 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    imagegen = shutil.which("imagegen", path=str(Path(sys.executable).parent))
    if imagegen is None:
        raise SystemExit(f"no imagegen command beside {sys.executable}; install the package in this environment")
    with tempfile.TemporaryDirectory(prefix="imagegen-cli-") as empty:
        # Empty model caches: `imagegen recipes` looks into them, and the user's own should not sway the times.
        env = {**os.environ, "HF_HUB_CACHE": empty, "MODELSCOPE_CACHE": empty}
        timings = [
            *(Timing(f"imagegen {' '.join(command)}", *_time([imagegen, *command], env, args.runs),
                     _heavy_imports(command, env)) for command in COMMANDS),
            Timing('python -c "pass"', *_time([sys.executable, "-c", "pass"], env, args.runs), None),
            Timing('python -c "import torch"', *_time([sys.executable, "-c", "import torch"], env, args.runs), None),
        ]
    print_table(timings, args.runs)
    return 0


def _time(command: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median and minimum wall time in ms; one untimed run first, so every timed run finds the files cached."""
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - started) * 1000)
    timed = times[1:]
    return statistics.median(timed), min(timed)


def _heavy_imports(command: list[str], env: dict[str, str]) -> list[str]:
    """The HEAVY modules in sys.modules after the command ran, in a process of its own."""
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *command], env=env, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1])


def print_table(timings: list[Timing], runs: int) -> None:
    """One row per command; the last timing (import torch) is what every other is set against."""
    torch_ms = timings[-1].median_ms
    rows = [("command", "median", "min", "vs import torch", "imports torch/diffusers/transformers")]
    for t in timings:
        imported = "-" if t.heavy_imports is None else ("yes: " + ", ".join(t.heavy_imports)
                                                        if t.heavy_imports else "no")
        rows.append((t.label, f"{t.median_ms:.0f} ms", f"{t.min_ms:.0f} ms", f"{t.median_ms / torch_ms:.2f}x",
                     imported))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"{runs} timed runs each (fresh process per run, one untimed warm-up), {sys.executable}")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
