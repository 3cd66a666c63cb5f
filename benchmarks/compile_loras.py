"""What a LoRA costs a `--fast compile` pipeline: peft wraps the compiled blocks' linear layers in LoRA layers, so
torch recompiles those blocks for the first request with LoRAs (and again for the first one without, after).

    python benchmarks/compile_loras.py [--rounds 3]

On the tiny SD 1.5 of the tests (tests/tiny_sd15.py: random weights, its peft LoRA) in a temporary offline cache,
one engine, one job at a time, seconds per job: the compiled pipeline without LoRA (warm), then the first job with
the LoRA, the next ones with it, the first without it again, the next ones without; the eager pipeline alongside.
The compile times are those of the tiny model's blocks; a full-size UNet's blocks have the same structure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from tables import print_rows

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="jobs timed after each first one (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cache, loras = Path(folder) / "hub", Path(folder) / "loras"
        os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", IMAGEGEN_LORA_DIR=str(loras),
                          TORCHINDUCTOR_CACHE_DIR=str(Path(folder) / "inductor"))
        sys.path.insert(0, str(TESTS))
        from tiny_sd15 import build_sd15, write_loras

        build_sd15(cache)
        write_loras(loras)
        rows = [("pipeline", "job", "seconds")]
        for fast in (None, "compile"):
            rows += measure(fast, args.rounds)
        print_rows(rows)
    return 0


def measure(fast: str | None, rounds: int) -> list[tuple[str, str, str]]:
    from imagegen.engine import Engine, EngineOptions
    from imagegen.prompts.lora_tags import LoraSpec
    from imagegen.request import GenerationRequest

    engine = Engine(EngineOptions(device="cpu"))
    plain = GenerationRequest(prompt="a lighthouse", recipe="sd15", seed=1, width=64, height=64,
                              num_inference_steps=4, fast=fast)
    with_lora = GenerationRequest(**{**plain.__dict__, "loras": (LoraSpec("sd15_peft", 0.8),)})
    name = fast or "eager"
    rows = []

    def timed(request: GenerationRequest) -> float:
        started = time.perf_counter()
        engine.generate(request)
        return time.perf_counter() - started

    rows.append((name, "first (load and compile)", f"{timed(plain):.2f}"))
    for label, request in (("without LoRA", plain), ("with LoRA", with_lora), ("without LoRA again", plain)):
        first = timed(request)
        rest = sorted(timed(request) for _ in range(rounds))
        rows.append((name, f"{label}: first", f"{first:.2f}"))
        rows.append((name, f"{label}: median of next {rounds}", f"{rest[len(rest) // 2]:.2f}"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
