"""Peak memory of SDXL, LCM-SDXL and SDXL-Lightning kept warm together: imagegen against the seed's way.

The three recipes differ only in their UNet and scheduler. imagegen's ComponentStore loads the SDXL base's
text encoders and VAE once and every assembled pipeline references them; the seed's diffusers code calls
``from_pretrained`` per recipe and so holds three copies. This script measures both in fresh processes, plus
one plain SDXL pipeline as the baseline that the cost of the two extra recipes is read against:

    python benchmarks/shared_components.py [--scale 8] [--cache DIR]

Models are the tiny random-weight repos of tests/tiny_models.py, widened by ``--scale`` so that parameter
memory stands well above the noise of the allocator and of torch's own import.
"""

from __future__ import annotations

import argparse
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
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
MARKER = "imagegen-benchmark.json"  # written into --cache after a complete build: records its scale
PROMPT = "Beautiful and cute girl, rain jacket, soft lighting"
SEED = 7
SIDE = 64
# (recipe, num_inference_steps, guidance_scale): SDXL at 2 steps to keep the run short, the distilled
# recipes at their seed defaults; both ways get exactly these arguments.
LIGHTNING_STEPS = 4  # picks the Lightning checkpoint file too
RUNS = (("sdxl", 2, 5.0), ("lcm-sdxl", 4, 8.0), ("sdxl-lightning", LIGHTNING_STEPS, 0.0))
ROLES = ("text_encoder", "text_encoder_2", "vae", "unet")
SHARED_ROLES = ("text_encoder", "text_encoder_2", "vae")
MIB = 2**20
# Quiet loaders: their warnings and progress bars would bury the table. Same values in every process.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}


@dataclass(frozen=True)
class Case:
    """One way of holding pipelines in memory; `run` draws one image per recipe and returns the live pipelines."""

    name: str
    summary: str
    run: Callable[[], list[Any]]


@dataclass(frozen=True)
class Measurement:
    """What one case's process reports; RSS in MiB, sizes are float32 parameter bytes of the first pipeline."""

    case: str
    peak_rss_mib: float
    rss_after_import_mib: float
    rss_after_mib: float
    seconds: float
    shared_mib: float  # text_encoder + text_encoder_2 + vae
    unet_mib: float
    distinct: dict[str, int]  # role -> distinct objects across the live pipelines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=8,
                        help="width multiplier of the tiny models (default 8: text encoders + VAE ~286 MiB)")
    parser.add_argument("--cache", type=Path,
                        help="Hugging Face cache folder to build into, or reuse if built at this scale (default: temp)")
    parser.add_argument("--case", choices=list(CASES),
                        help="measure one case in this process and print it as JSON (how the script runs each case)")
    args = parser.parse_args(argv)
    if args.case:
        if not args.cache:
            parser.error("--case needs --cache")
        print(json.dumps(asdict(measure(CASES[args.case]))))
        return 0
    if args.cache:
        return report(args.cache, args.scale)
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as folder:
        return report(Path(folder), args.scale)


def report(cache: Path, scale: int) -> int:
    """Build (or reuse) the cache, measure every case in its own process and print the comparison."""
    started = time.perf_counter()
    built = prepare_cache(cache, scale)
    print(f"cache {cache} at scale {scale}: {'built' if built else 'reused'} in {time.perf_counter() - started:.0f} s")
    results = {name: run_case(name, cache) for name in CASES}
    print_table(results, scale)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def prepare_cache(cache: Path, scale: int) -> bool:
    """Build the tiny repos at `scale` unless the marker says they are there; True when it built them.

    build_hf_cache replaces the repos it writes, so a non-empty folder without our marker (a real Hugging
    Face cache, say) is refused rather than overwritten.
    """
    marker = cache / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("scale") == scale:
            return False
        marker.unlink()
    elif cache.is_dir() and any(cache.iterdir()):
        raise SystemExit(f"{cache} is not empty and was not built by this script; give an empty or new folder")
    os.environ.update(QUIET)
    sys.path.insert(0, str(TESTS))
    from tiny_models import build_hf_cache

    build_hf_cache(cache, scale=scale)
    marker.write_text(json.dumps({"scale": scale}))
    return True


def run_case(name: str, cache: Path) -> Measurement:
    """Measure a case in a fresh interpreter, so that no import or allocation of another case counts."""
    env = {**os.environ, **QUIET, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           # an empty ModelScope cache: imagegen must find everything in the Hugging Face one
           "MODELSCOPE_CACHE": str(cache / "modelscope-empty")}
    done = subprocess.run([sys.executable, __file__, "--case", name, "--cache", str(cache)],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"case {name} failed:\n{done.stderr}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure(case: Case) -> Measurement:
    """Run the case and read RSS while all its pipelines are still alive."""
    import diffusers  # noqa: F401 - imported before the first reading so that it counts as import cost
    import psutil
    import torch  # noqa: F401 - as above

    process = psutil.Process()
    after_import = process.memory_info().rss
    started = time.perf_counter()
    pipes = case.run()
    seconds = time.perf_counter() - started
    first = pipes[0]
    return Measurement(
        case=case.name,
        peak_rss_mib=_peak_rss() / MIB,
        rss_after_import_mib=after_import / MIB,
        rss_after_mib=process.memory_info().rss / MIB,
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


def _imagegen_all() -> list[Any]:
    """One engine runs the three recipes in turn and keeps all three pipelines warm."""
    from imagegen.engine import Engine, EngineOptions
    from imagegen.request import GenerationRequest

    engine = Engine(EngineOptions(device="cpu", max_pipelines=len(RUNS)))
    for recipe, steps, guidance in RUNS:
        [result] = engine.generate(GenerationRequest(prompt=PROMPT, recipe=recipe, seed=SEED, width=SIDE,
                                                     height=SIDE, num_inference_steps=steps, guidance_scale=guidance))
        _check_size(result.image, recipe)
    return [pipe for pipe, _ in engine._pipelines.values()]


def _seed_sdxl() -> Any:
    """tests/seed_reference.sdxl's loading, with the pipeline handed back instead of dropped."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from tiny_models import SDXL_BASE

    return StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, torch_dtype=torch.float32).to("cpu")


def _seed_lcm() -> Any:
    """tests/seed_reference.lcm_sdxl's loading: the LCM UNet swapped into a second copy of the base."""
    import torch
    from diffusers import DiffusionPipeline, LCMScheduler, UNet2DConditionModel
    from tiny_models import LCM_SDXL, SDXL_BASE

    unet = UNet2DConditionModel.from_pretrained(LCM_SDXL, torch_dtype=torch.float32)
    pipe = DiffusionPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=torch.float32)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return pipe.to("cpu")


def _seed_lightning() -> Any:
    """tests/seed_reference.sdxl_lightning's loading: the LIGHTNING_STEPS Lightning UNet in a third copy of the base."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from tiny_models import SDXL_BASE, SDXL_LIGHTNING

    checkpoint = f"sdxl_lightning_{LIGHTNING_STEPS}step_unet.safetensors"
    unet = UNet2DConditionModel.from_config(SDXL_BASE, subfolder="unet").to("cpu", torch.float32)
    unet.load_state_dict(load_file(hf_hub_download(SDXL_LIGHTNING, checkpoint), device="cpu"))
    pipe = StableDiffusionXLPipeline.from_pretrained(SDXL_BASE, unet=unet, torch_dtype=torch.float32).to("cpu")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return pipe


SEED_LOADERS: dict[str, Callable[[], Any]] = {
    "sdxl": _seed_sdxl, "lcm-sdxl": _seed_lcm, "sdxl-lightning": _seed_lightning,
}


def _seed_way(recipes: Sequence[str]) -> Callable[[], list[Any]]:
    """Load each recipe's pipeline as the seed does and draw one image with it, keeping every pipeline alive."""

    def run() -> list[Any]:
        import torch

        sys.path.insert(0, str(TESTS))
        pipes = []
        for recipe, steps, guidance in RUNS:
            if recipe not in recipes:
                continue
            pipe = SEED_LOADERS[recipe]()
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


CASES = {
    case.name: case
    for case in (
        Case("imagegen", "Engine(max_pipelines=3): sdxl, lcm-sdxl, sdxl-lightning", _imagegen_all),
        Case("seed", "diffusers from_pretrained x3: sdxl, lcm-sdxl, sdxl-lightning",
             _seed_way(["sdxl", "lcm-sdxl", "sdxl-lightning"])),
        Case("baseline", "diffusers from_pretrained x1: sdxl", _seed_way(["sdxl"])),
    )
}


def print_table(results: dict[str, Measurement], scale: int) -> None:
    """The per-case table, then the extra cost of two more recipes each way and its ratio."""
    base = results["baseline"]
    print(f"\nscale {scale}: text encoders + VAE {base.shared_mib:.1f} MiB, one UNet {base.unet_mib:.1f} MiB "
          "(float32 parameter bytes)")
    header = ("case", "pipelines", "peak RSS", "RSS after", "imports", "seconds", "distinct TE/TE2/VAE/UNet")
    rows = [header] + [
        (m.case, CASES[m.case].summary, f"{m.peak_rss_mib:.0f} MiB", f"{m.rss_after_mib:.0f} MiB",
         f"{m.rss_after_import_mib:.0f} MiB", f"{m.seconds:.1f}", "/".join(str(m.distinct[r]) for r in ROLES))
        for m in results.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

    ours, theirs = results["imagegen"], results["seed"]
    extra_ours = ours.peak_rss_mib - base.peak_rss_mib
    extra_theirs = theirs.peak_rss_mib - base.peak_rss_mib
    expected_ours = 2 * base.unet_mib
    expected_theirs = 2 * (base.unet_mib + base.shared_mib)
    print("\nextra peak RSS for lcm-sdxl + sdxl-lightning on top of sdxl alone:")
    print(f"  imagegen  (a-c) {extra_ours:7.0f} MiB   parameters of 2 UNets:                          "
          f"{expected_ours:7.0f} MiB")
    print(f"  seed way  (b-c) {extra_theirs:7.0f} MiB   parameters of 2 x (UNet + text encoders + VAE): "
          f"{expected_theirs:7.0f} MiB")
    print(f"  ratio (b-c)/(a-c) = {extra_theirs / extra_ours:.2f}   (from parameter bytes: "
          f"{expected_theirs / expected_ours:.2f})")
    extra_after = (theirs.rss_after_mib - base.rss_after_mib) / (ours.rss_after_mib - base.rss_after_mib)
    print(f"  same ratio on RSS after the work: {extra_after:.2f}")
    shared = all(ours.distinct[role] == 1 for role in SHARED_ROLES) and ours.distinct["unet"] == len(RUNS)
    print(f"imagegen holds one text encoder, text encoder 2 and VAE and {len(RUNS)} UNets: "
          f"{'yes' if shared else 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
