"""Peak memory of SDXL, LCM-SDXL and SDXL-Lightning kept warm together: imagegen against the reference tutorial's way.

The three recipes differ only in their UNet and scheduler. imagegen's ComponentStore loads the SDXL base's
text encoders and VAE once and every assembled pipeline references them; the reference tutorial's diffusers code calls
``from_pretrained`` per recipe and so holds three of each. This script measures both in fresh processes, plus
SDXL alone each way, the baselines that the cost of the two extra recipes is read against:

    python benchmarks/shared_components.py [--scale 8] [--cache DIR] [--dtype float32]

Models are the tiny random-weight repos of tests/tiny_models.py, widened by ``--scale`` so that parameter
memory stands well above the noise of the allocator and of torch's own import.

Read RSS with care on the CPU: diffusers and transformers map float32 safetensors files into memory instead
of copying them, and RSS counts each mapping of a page, so three pipelines mapping the same file count it
three times although the machine holds it once (in the page cache). PSS divides a page among its mappings
and is printed beside RSS for that reason. With ``--dtype bfloat16`` every weight is converted on loading,
so each copy is private memory and PSS shows what sharing saves where copies are real (as on a GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tables import print_rows

if TYPE_CHECKING:
    import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
MARKER = "imagegen-benchmark.json"  # written into --cache after a complete build: what it was built from
PROMPT = "Beautiful and cute girl, rain jacket, soft lighting"
SEED = 7
SIDE = 64
LIGHTNING_STEPS = 4  # also picks the Lightning checkpoint file
# (recipe, num_inference_steps, guidance_scale): SDXL at 2 steps to keep the run short, the distilled
# recipes at their reference tutorial defaults; both ways get exactly these arguments.
RUNS = (("sdxl", 2, 5.0), ("lcm-sdxl", 4, 8.0), ("sdxl-lightning", LIGHTNING_STEPS, 0.0))
ROLES = ("text_encoder", "text_encoder_2", "vae", "unet")
SHARED_ROLES = ("text_encoder", "text_encoder_2", "vae")
MIB = 2**20
DTYPES = ("float32", "bfloat16")  # float32 maps the files; bfloat16 converts, so every copy is its own memory
# Quiet loaders: their warnings and progress bars would bury the table.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}


@dataclass(frozen=True)
class Case:
    """One way of holding pipelines in memory; `run(dtype)` draws one image per recipe, returns the live pipelines."""

    name: str
    letter: str  # its name in the ratios
    summary: str
    run: Callable[[str], list[Any]]


@dataclass(frozen=True)
class Measurement:
    """What one case's process reports: memory in MiB; sizes are parameter bytes of its first pipeline."""

    case: str
    peak_rss_mib: float  # ru_maxrss over the whole process, imports included
    rss_after_import_mib: float  # torch and diffusers imported, nothing loaded
    rss_after_mib: float  # every pipeline still alive
    pss_after_mib: float
    seconds: float  # loading and generating, imports excluded
    shared_mib: float  # text_encoder + text_encoder_2 + vae
    unet_mib: float
    distinct: dict[str, int]  # role -> distinct objects across the live pipelines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=8,
                        help="width multiplier of the tiny models (default 8); the report gives the sizes it makes")
    parser.add_argument("--cache", type=Path,
                        help="Hugging Face cache folder to build into, or to reuse if this script built it at this "
                             "scale from the current tests/tiny_models.py (default: a temporary folder)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype the pipelines run in, both ways (default float32, as the reference tutorial on a CPU)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--build", action="store_true", help="only build the cache at --scale into --cache")
    only.add_argument("--case", choices=list(CASES), help="only measure this case, in this process, as JSON")
    args = parser.parse_args(argv)
    if (args.build or args.case) and not args.cache:
        parser.error("--build and --case need --cache")
    if args.build:
        build_cache(args.cache, args.scale)
        return 0
    if args.case:
        print(json.dumps(asdict(measure(CASES[args.case], args.dtype))))
        return 0
    if args.cache:
        return report(args.cache, args.scale, args.dtype)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as folder:
        return report(Path(folder), args.scale, args.dtype)


def report(cache: Path, scale: int, dtype: str) -> int:
    """Build (or reuse) the cache, measure every case in its own process and print the comparison.

    This process imports neither torch nor the models: Linux carries a parent's peak RSS over into a
    child's ru_maxrss across fork and exec, so a parent that built the models would inflate every case.
    """
    started = time.perf_counter()
    reuse = _read_marker(cache) == _build_key(scale)
    if not reuse:
        _run_self(["--build", "--scale", str(scale), "--cache", str(cache)], cache)
    print(f"cache {cache} at scale {scale}: {'reused' if reuse else 'built'} in "
          f"{time.perf_counter() - started:.0f} s")
    results = {}
    for name in CASES:
        output = _run_self(["--case", name, "--cache", str(cache), "--dtype", dtype], cache)
        results[name] = Measurement(**json.loads(output))
    print_table(results, scale, dtype)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def _build_key(scale: int) -> dict[str, Any]:
    """What a built cache depends on: the scale and the code that wrote the models."""
    source = (TESTS / "tiny_models.py").read_bytes()
    return {"scale": scale, "tiny_models_sha256": hashlib.sha256(source).hexdigest()}


def _read_marker(cache: Path) -> dict[str, Any] | None:
    """The build key this script wrote into `cache`, None if it did not build it (or not completely)."""
    marker = cache / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def build_cache(cache: Path, scale: int) -> None:
    """Build the tiny repos at `scale` into `cache` and mark it as built from them.

    build_hf_cache replaces the repos it writes, so a non-empty folder that this script did not build (a real
    Hugging Face cache, say) is refused rather than overwritten.
    """
    marker = cache / MARKER
    if marker.is_file():
        marker.unlink()  # an interrupted rebuild must not pass for the old build
    elif cache.is_dir() and any(cache.iterdir()):
        raise SystemExit(f"{cache} is not empty and was not built by this script; give an empty or new folder")
    sys.path.insert(0, str(TESTS))
    from tiny_models import build_hf_cache

    build_hf_cache(cache, scale=scale)
    marker.write_text(json.dumps(_build_key(scale)))


def _run_self(arguments: list[str], cache: Path) -> str:
    """Run this script with `arguments` in a fresh interpreter pointed at `cache`; its last stdout line."""
    env = {**os.environ, **QUIET, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           # an empty ModelScope cache: imagegen must find everything in the Hugging Face one
           "MODELSCOPE_CACHE": str(cache / "modelscope-empty")}
    done = subprocess.run([sys.executable, __file__, *arguments], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stderr}")
    return (done.stdout.strip().splitlines() or [""])[-1]


def measure(case: Case, dtype: str) -> Measurement:
    """Run the case and read memory while all its pipelines are still alive."""
    import diffusers  # noqa: F401 - imported before the first reading so that it counts as import cost
    import psutil
    import torch  # noqa: F401 - as above

    process = psutil.Process()
    after_import = process.memory_info().rss
    started = time.perf_counter()
    pipes = case.run(dtype)
    seconds = time.perf_counter() - started
    first = pipes[0]
    memory = process.memory_full_info()  # pss is Linux-only
    return Measurement(
        case=case.name,
        peak_rss_mib=_peak_rss() / MIB,
        rss_after_import_mib=after_import / MIB,
        rss_after_mib=memory.rss / MIB,
        pss_after_mib=memory.pss / MIB,
        seconds=seconds,
        shared_mib=sum(_parameter_bytes(getattr(first, role)) for role in SHARED_ROLES) / MIB,
        unet_mib=_parameter_bytes(first.unet) / MIB,
        distinct={role: len({id(getattr(pipe, role)) for pipe in pipes}) for role in ROLES},
    )


def _peak_rss() -> int:
    """The process's peak resident set in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _parameter_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _imagegen_way(recipes: Sequence[str]) -> Callable[[str], list[Any]]:
    """One engine runs the recipes in turn and keeps all their pipelines warm."""

    def run(dtype: str) -> list[Any]:
        from imagegen.engine import Engine, EngineOptions
        from imagegen.request import GenerationRequest

        engine = Engine(EngineOptions(device="cpu", dtype=dtype, max_pipelines=len(recipes)))
        for recipe, steps, guidance in RUNS:
            if recipe not in recipes:
                continue
            [result] = engine.generate(GenerationRequest(prompt=PROMPT, recipe=recipe, seed=SEED, width=SIDE,
                                                         height=SIDE, num_inference_steps=steps,
                                                         guidance_scale=guidance))
            _check_size(result.image, recipe)
        return [pipe for pipe, _ in engine._pipelines.values()]

    return run


def _reference_sdxl(dtype: torch.dtype) -> Any:
    """tests/reference_tutorial.sdxl's loading, with the pipeline handed back instead of dropped."""
    from diffusers import StableDiffusionXLPipeline
    from tiny_models import SDXL_BASE

    return StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, torch_dtype=dtype).to("cpu")


def _reference_lcm(dtype: torch.dtype) -> Any:
    """tests/reference_tutorial.lcm_sdxl's loading: the LCM UNet swapped into a second copy of the base."""
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
    from tiny_models import LCM_SDXL, SDXL_BASE

    unet = UNet2DConditionModel.from_pretrained(LCM_SDXL, torch_dtype=dtype)
    pipe = DiffusionPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=dtype)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe.to("cpu")


def _reference_lightning(dtype: torch.dtype) -> Any:
    """tests/reference_tutorial.sdxl_lightning's loading: the Lightning UNet swapped into a third copy of the base."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from tiny_models import SDXL_BASE, SDXL_LIGHTNING

    checkpoint = f"sdxl_lightning_{LIGHTNING_STEPS}step_unet.safetensors"
    unet = UNet2DConditionModel.from_config(SDXL_BASE, subfolder="unet").to("cpu", dtype)
    unet.load_state_dict(load_file(hf_hub_download(SDXL_LIGHTNING, checkpoint), device="cpu"))
    pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=dtype).to("cpu")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


SEED_LOADERS: dict[str, Callable[[torch.dtype], Any]] = {
    "sdxl": _reference_sdxl, "lcm-sdxl": _reference_lcm, "sdxl-lightning": _reference_lightning,
}


def _reference_way(recipes: Sequence[str]) -> Callable[[str], list[Any]]:
    """Load each recipe's pipeline as the reference tutorial does and draw one image with it, keeping every pipeline alive."""

    def run(dtype: str) -> list[Any]:
        import torch

        sys.path.insert(0, str(TESTS))
        pipes = []
        for recipe, steps, guidance in RUNS:
            if recipe not in recipes:
                continue
            pipe = SEED_LOADERS[recipe](getattr(torch, dtype))
            pipe.set_progress_bar_config(disable=True)
            [image] = pipe(prompt=PROMPT, width=SIDE, height=SIDE, num_inference_steps=steps,
                           guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(SEED)).images
            _check_size(image, recipe)
            pipes.append(pipe)
        return pipes

    return run


def _check_size(image: Any, recipe: str) -> None:
    if image.size != (SIDE, SIDE):
        raise RuntimeError(f"{recipe} produced a {image.size} image, not {SIDE}x{SIDE}")


ALL = [recipe for recipe, _, _ in RUNS]
# a, b and c of the brief's ratio (b-c)/(a-c); a0 is imagegen's own one-recipe baseline, for (b-c)/(a-a0),
# which stays fair where the two ways load differently (with --dtype bfloat16 imagegen reads the fp16 files).
CASES = {
    case.name: case
    for case in (
        Case("imagegen", "a", "Engine(max_pipelines=3): " + ", ".join(ALL), _imagegen_way(ALL)),
        Case("reference", "b", "diffusers from_pretrained x3: " + ", ".join(ALL), _reference_way(ALL)),
        Case("baseline", "c", "diffusers from_pretrained x1: sdxl", _reference_way(["sdxl"])),
        Case("imagegen-sdxl", "a0", "Engine: sdxl", _imagegen_way(["sdxl"])),
    )
}


def print_table(results: dict[str, Measurement], scale: int, dtype: str) -> None:
    """The per-case table, then the extra cost of the two extra recipes each way and its ratio."""
    ours, theirs, base, own_base = (results[name] for name in CASES)
    print(f"\nscale {scale}: text encoders + VAE {base.shared_mib:.1f} MiB, one UNet {base.unet_mib:.1f} MiB "
          f"({dtype} parameter bytes)\n")
    print_rows([("case", "pipelines", "peak RSS", "RSS after", "PSS after", "RSS imports", "seconds",
                  "distinct TE/TE2/VAE/UNet")] + [
        (f"{CASES[m.case].letter} {m.case}", CASES[m.case].summary, f"{m.peak_rss_mib:.0f} MiB",
         f"{m.rss_after_mib:.0f} MiB", f"{m.pss_after_mib:.0f} MiB", f"{m.rss_after_import_mib:.0f} MiB",
         f"{m.seconds:.1f}", "/".join(str(m.distinct[role]) for role in ROLES))
        for m in results.values()
    ])

    print("\nextra memory of lcm-sdxl + sdxl-lightning over sdxl alone, in MiB:")
    two_unets, two_pipelines = 2 * base.unet_mib, 2 * (base.unet_mib + base.shared_mib)
    rows = [("", "a-c", "a-a0", "b-c", "(b-c)/(a-c)", "(b-c)/(a-a0)"),
            ("parameters", f"{two_unets:.0f}", f"{two_unets:.0f}", f"{two_pipelines:.0f}",
             f"{two_pipelines / two_unets:.2f}", f"{two_pipelines / two_unets:.2f}")]
    for label, field in (("peak RSS", "peak_rss_mib"), ("RSS after", "rss_after_mib"), ("PSS after", "pss_after_mib")):
        a, b, c, a0 = (getattr(m, field) for m in (ours, theirs, base, own_base))
        rows.append((label, f"{a - c:.0f}", f"{a - a0:.0f}", f"{b - c:.0f}", f"{(b - c) / (a - c):.2f}",
                     f"{(b - c) / (a - a0):.2f}"))
    print_rows(rows)
    print("(parameters: a = 2 UNets, b = 2 x (UNet + text encoders + VAE))")
    shared = all(ours.distinct[role] == 1 for role in SHARED_ROLES) and ours.distinct["unet"] == len(RUNS)
    print(f"\nimagegen holds one text encoder, one text encoder 2, one VAE and {len(RUNS)} UNets: "
          f"{'yes' if shared else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
