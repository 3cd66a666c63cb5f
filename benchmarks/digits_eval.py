"""How good the built-in digits model is: a judge's accuracy on its samples, their diversity, and its speed.

    python benchmarks/digits_eval.py [--model DIR] [--steps N] [--guidance G] [--per-class 100] [--json PATH]

The judge is an RBF SVC fitted on the same 80% of scikit-learn's digits that trained the model
(`imagegen.builtin.train_digits.digits_split`), its C picked by 5-fold cross-validation there; its
accuracy on the real held-out 20% says how far to trust it. Samples come from the folder's own scheduler
(DPM-Solver++), are put back on the data's 0..16 scale, and count as right when the judge reads the digit
that was asked for. Diversity compares nearest-neighbour distances to the training digits: samples
should sit about as far from them as real unseen digits do, and a "near copy" is a sample closer to a
training digit than all but the closest 5% of real held-out digits are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

NEAR_COPY_PERCENTILE = 5.0
SPEED_BATCH = 100
FAST_STEPS = 10
TARGET_ACCURACY = 0.97  # what the shipped model must reach at the recipe's defaults
MAX_NEAR_COPIES = 0.05  # no more near copies than the 5% of real held-out digits that are that close
JUDGE_C = (1.0, 3.0, 10.0, 30.0)


@dataclass(frozen=True)
class Judge:
    """The classifier that reads samples, and how well it reads real digits it never saw."""

    classifier: Any
    c: float
    test_accuracy: float


@dataclass(frozen=True)
class SampleScore:
    """One setting's samples as the judge read them; accuracy_per_class is indexed by digit."""

    steps: int
    guidance: float
    accuracy: float
    accuracy_per_class: list[float]


@dataclass(frozen=True)
class Diversity:
    """Mean nearest-neighbour L2 distances to the training digits (0..16 pixels) and the near-copy rate."""

    samples_to_train: float
    test_to_train: float
    near_copy_threshold: float
    near_copy_fraction: float


@dataclass(frozen=True)
class Speed:
    """Samples per second for one batch of SPEED_BATCH samples of one digit, on this machine's CPU."""

    steps: int
    guidance: float
    samples_per_second: float
    accuracy: float


def fit_judge(split: Any) -> Judge:
    """An RBF SVC on the real training digits, its C picked by 5-fold cross-validation on them alone."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    search = GridSearchCV(SVC(kernel="rbf", gamma="scale"), {"C": list(JUDGE_C)}, cv=5)
    search.fit(split.x_train, split.y_train)
    accuracy = float(search.best_estimator_.score(split.x_test, split.y_test))
    return Judge(search.best_estimator_, float(search.best_params_["C"]), accuracy)


def load_pipeline(model: Path, device: str = "cpu") -> Any:
    """The folder's transformer and scheduler in PixelDiTPipeline, as the digits recipe assembles them."""
    from imagegen.builtin.dit_model import DiT
    from imagegen.builtin.dpm_solver import DPMSolverPlusPlus2M
    from imagegen.pipelines.class_conditional import PixelDiTPipeline

    transformer = DiT.from_pretrained(model / "transformer").to(device)
    scheduler = DPMSolverPlusPlus2M.from_pretrained(model / "scheduler")
    id2label = json.loads((model / "model_index.json").read_text())["id2label"]
    pipe = PixelDiTPipeline(transformer=transformer, scheduler=scheduler, id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_images(pipe: Any, digit: int, count: int, *, steps: int, guidance: float, seed: int) -> Any:
    """`count` samples of `digit` in [0, 1], with seeds seed, seed+1, ... (the Engine's seed contract)."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]
    return pipe(class_labels=[digit] * count, guidance_scale=guidance, num_inference_steps=steps,
                generator=generators, output_type="pt").images  # (count, 1, 8, 8)


def sample_digits(pipe: Any, digit: int, count: int, *, steps: int, guidance: float, seed: int) -> Any:
    """As sample_images, on the data's scale: rows of 64 whole pixels 0..16."""
    from imagegen.builtin.train_digits import to_pixels

    return to_pixels(sample_images(pipe, digit, count, steps=steps, guidance=guidance, seed=seed))  # (count, 64)


def sample_all(pipe: Any, per_class: int, *, steps: int, guidance: float) -> tuple[Any, Any]:
    """`per_class` samples of every digit, digit d from seed d*1000: rows (10*per_class, 64) and their digits."""
    import numpy as np

    from imagegen.builtin.train_digits import NUM_CLASSES

    rows = [sample_digits(pipe, d, per_class, steps=steps, guidance=guidance, seed=d * 1000)
            for d in range(NUM_CLASSES)]
    return np.concatenate(rows), np.repeat(np.arange(NUM_CLASSES), per_class)


def score(judge: Judge, pixels: Any, digits: Any, *, steps: int, guidance: float) -> SampleScore:
    import numpy as np

    right = judge.classifier.predict(pixels) == digits
    per_class = [float(right[digits == d].mean()) for d in np.unique(digits)]
    return SampleScore(steps, guidance, float(right.mean()), per_class)


def diversity(pixels: Any, split: Any) -> Diversity:
    """Samples' and real held-out digits' distances to their nearest training digit."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(split.x_train)
    to_train = index.kneighbors(pixels)[0][:, 0]  # (N,)
    test_to_train = index.kneighbors(split.x_test)[0][:, 0]  # (N_test,)
    threshold = float(np.percentile(test_to_train, NEAR_COPY_PERCENTILE))
    return Diversity(float(to_train.mean()), float(test_to_train.mean()), threshold,
                     float((to_train <= threshold).mean()))


def speed(pipe: Any, judge: Judge, *, steps: int, guidance: float) -> Speed:
    """One warm-up, then one timed batch of SPEED_BATCH sevens; its accuracy comes from the same batch."""
    import numpy as np

    digit = 7
    sample_digits(pipe, digit, 4, steps=steps, guidance=guidance, seed=0)
    started = time.perf_counter()
    pixels = sample_digits(pipe, digit, SPEED_BATCH, steps=steps, guidance=guidance, seed=digit * 1000)
    seconds = time.perf_counter() - started
    accuracy = float((judge.classifier.predict(pixels) == np.full(SPEED_BATCH, digit)).mean())
    return Speed(steps, guidance, SPEED_BATCH / seconds, accuracy)


def engine_matches(model: Path, pipe: Any, *, steps: int, guidance: float) -> bool:
    """Whether the Engine (digits recipe, 8x8, seeds 7000..7003) gives the direct pipeline's pixels exactly."""
    import numpy as np

    from imagegen.engine import Engine, EngineOptions
    from imagegen.request import GenerationRequest

    request = GenerationRequest(prompt="7", recipe="digits", seed=7000, num_images=4, width=8, height=8,
                                num_inference_steps=steps, guidance_scale=guidance, model=str(model))
    results = Engine(EngineOptions(device="cpu")).generate(request)
    from_engine = np.stack([np.asarray(r.image) for r in results])  # (4, 8, 8), uint8
    direct = sample_images(pipe, 7, 4, steps=steps, guidance=guidance, seed=7000)  # (4, 1, 8, 8)
    # diffusers' numpy_to_pil quantises the same way: round(x * 255) to uint8.
    return bool(np.array_equal(from_engine, (direct[:, 0] * 255).round().numpy().astype(np.uint8)))


def cli_seconds(model: Path | None, *, steps: int, guidance: float) -> float:
    """Wall time of one `imagegen generate "7" --recipe digits` process, from start to written PNG."""
    command = [str(Path(sys.executable).with_name("imagegen")), "generate", "7", "--recipe", "digits",
               "-o", "/tmp/seven.png", "--steps", str(steps), "--guidance", str(guidance)]
    if model is not None:
        command += ["--model", str(model)]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None, help="DPM-Solver steps (default: the recipe's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the recipe's)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    import torch

    from imagegen.builtin.train_digits import digits_split
    from imagegen.recipes.dit import DIGITS, builtin_digits_folder

    torch.set_num_threads(args.threads)
    model = args.model or builtin_digits_folder()
    steps = args.steps or DIGITS.defaults.num_inference_steps
    guidance = DIGITS.defaults.guidance_scale if args.guidance is None else args.guidance
    split = digits_split()
    judge = fit_judge(split)
    pipe = load_pipeline(model)

    pixels, digits = sample_all(pipe, args.per_class, steps=steps, guidance=guidance)
    samples = score(judge, pixels, digits, steps=steps, guidance=guidance)
    spread = diversity(pixels, split)
    speeds = [speed(pipe, judge, steps=s, guidance=guidance) for s in dict.fromkeys((steps, FAST_STEPS))]
    same = engine_matches(model, pipe, steps=steps, guidance=guidance)
    cli = cli_seconds(args.model, steps=steps, guidance=guidance)

    print(f"model            {model}")
    print(f"judge            SVC rbf C={judge.c:g}: {judge.test_accuracy:.2%} on {len(split.y_test)} real "
          f"held-out digits (trained on {len(split.y_train)})")
    print(f"samples          {len(digits)} ({args.per_class} per digit), {steps} steps, guidance {guidance:g}: "
          f"{samples.accuracy:.2%} read as the asked digit")
    print("per digit        " + "  ".join(f"{d}:{a:.0%}" for d, a in enumerate(samples.accuracy_per_class)))
    print(f"nearest train    samples {spread.samples_to_train:.2f}, real held-out {spread.test_to_train:.2f} "
          f"(mean L2, 0..16 pixels)")
    print(f"near copies      {spread.near_copy_fraction:.2%} of samples within {spread.near_copy_threshold:.2f} "
          f"of a training digit (the {NEAR_COPY_PERCENTILE:g}th percentile of real held-out distances)")
    print(f"{'steps':>5} {'guidance':>8} {'samples/s':>10} {'accuracy':>9}   (batch of {SPEED_BATCH} sevens, "
          f"{args.threads} CPU threads)")
    for s in speeds:
        print(f"{s.steps:>5} {s.guidance:>8g} {s.samples_per_second:>10.1f} {s.accuracy:>9.0%}")
    print(f"engine = direct  {same} (digits recipe through imagegen.engine, 4 sevens)")
    print(f"CLI              {cli:.2f} s for `imagegen generate \"7\" --recipe digits -o /tmp/seven.png`")
    met = samples.accuracy >= TARGET_ACCURACY and spread.near_copy_fraction < MAX_NEAR_COPIES
    print(f"targets          {'met' if met else 'NOT met'} (accuracy >= {TARGET_ACCURACY:.0%}, "
          f"near copies < {MAX_NEAR_COPIES:.0%})")

    if args.json:
        report = {"model": str(model), "judge": {"c": judge.c, "test_accuracy": judge.test_accuracy},
                  "samples": asdict(samples), "diversity": asdict(spread),
                  "speed": [asdict(s) for s in speeds], "engine_matches_pipeline": same, "cli_seconds": cli,
                  "targets_met": met}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same and met else 1


if __name__ == "__main__":
    raise SystemExit(main())
