"""The `imagegen` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FAST = ["--recipe", "sdxl-turbo", "--width", "64", "--height", "64", "--seed", "42"]


def imagegen(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagegen.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def generated(sdxl_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "turbo.png"
    result = imagegen("generate", "a red fox", *FAST, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    return out


def test_generate_writes_the_image_with_its_parameters(generated) -> None:
    image = Image.open(generated)
    assert image.size == (64, 64)
    text = image.info["parameters"]
    assert text.startswith("a red fox\nSteps: 1, Sampler: Euler a, CFG scale: 0.0, Seed: 42, Size: 64x64, ")
    assert "Model: stabilityai/sdxl-turbo, Recipe: sdxl-turbo" in text


def test_info_prints_the_parameters(generated) -> None:
    result = imagegen("info", str(generated))
    assert result.returncode == 0
    assert result.stdout.strip() == Image.open(generated).info["parameters"]


@pytest.mark.slow
def test_an_image_regenerated_from_its_infotext_is_identical(generated, tmp_path) -> None:
    again = tmp_path / "again.png"
    result = imagegen("generate", "--from", str(generated), "-o", str(again))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(generated)))
    assert Image.open(again).info["parameters"] == Image.open(generated).info["parameters"]


@pytest.mark.slow
def test_several_images_into_a_folder_with_progress_on_stderr(sdxl_models, tmp_path) -> None:
    result = imagegen("generate", "a boat", "--recipe", "lcm-sdxl", "--width", "64", "--height", "64",
                      "--seed", "9", "-n", "2", "-o", str(tmp_path), "--format", "webp")
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert paths == [str(tmp_path / "00000-9.webp"), str(tmp_path / "00001-10.webp")]
    assert "4/4" in result.stderr
    info = imagegen("info", paths[1])
    assert "Seed: 10," in info.stdout and "Sampler: LCM" in info.stdout


@pytest.mark.usefixtures("sdxl_models", "cascade_models", "sd15_models", "controlnet_models")
def test_recipes_lists_defaults_and_local_availability() -> None:
    result = imagegen("recipes")
    assert result.returncode == 0
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert lines["sdxl-turbo"][:5] == ["sdxl-turbo", "1", "0", "512x512", "yes"]
    assert lines["lcm-sdxl"][:5] == ["lcm-sdxl", "4", "8", "1024x1024", "yes"]
    assert lines["sdxl-lightning"][4] == "yes"
    assert lines["stable-cascade"][:5] == ["stable-cascade", "20", "4", "1024x1024", "yes"]
    assert lines["sd15"][:5] == ["sd15", "50", "7.5", "512x512", "yes"]
    assert lines["sdxl-controlnet-canny"][:5] == ["sdxl-controlnet-canny", "50", "5", "1024x1024", "yes"]


def test_recipes_says_no_for_models_not_on_disk(tmp_path) -> None:
    result = imagegen("recipes", env={"HF_HUB_CACHE": str(tmp_path), "MODELSCOPE_CACHE": str(tmp_path)})
    availability = {line.split()[0]: line.split()[4] for line in result.stdout.splitlines()[1:]}
    assert availability.pop("digits") == "yes", "the built-in model ships with the package"
    assert set(availability.values()) == {"no"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "100"], "width must be a multiple of 8, got 100"),
        (["--steps", "0"], "steps) must be between 1 and 150, got 0"),
        (["-n", "99"], "(n) must be between 1 and 16, got 99"),
        (["--guidance", "nan"], "must be a finite number"),
        (["--seed", "-5"], "seed must be between 0 and 4294967295"),
        (["--recipe", "sdxl-lightning", "--steps", "3"], "has models for 1, 2, 4, 8 steps only"),
        (["--model", "./missing-folder"], "no such file or folder"),
        (["-o", "x.png", "--format", "jpeg"], "--format jpeg contradicts the output file name x.png"),
        (["-o", "x.bmp"], "cannot write .bmp files"),
        (["-o", "x.gif"], "recipe sdxl-turbo writes images: choose one of png, jpeg, webp, not gif"),
        (["--lora", "no-such-lora"], "LoRA 'no-such-lora' not found"),
        (["--lora", "style:nan"], "weight must be a number between -10 and 10"),
        (["--decoder-steps", "4"], "recipe sdxl-turbo does not take decoder_steps"),
        (["--control-image", "x.png"], "recipe sdxl-turbo does not take a control image"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line(sdxl_models, args, message, capsys) -> None:
    """In this process, to keep the default test run fast: a subprocess would start torch again for every case
    (test_unknown_digit_lists_what_the_model_knows checks the same one line from a real process)."""
    from imagegen.cli import main

    code = main(["generate", "a cat", "--recipe", "sdxl-turbo", *args])
    stderr = capsys.readouterr().err
    assert code != 0
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("imagegen: error: ")
    assert message in stderr


def test_unreachable_hub_fails_fast_with_a_message(tmp_path) -> None:
    """No cache, hub asked but unreachable (a closed local port): a clear error within seconds, no hang."""
    started = time.monotonic()
    result = imagegen("generate", "a cat", *FAST, "-o", str(tmp_path / "x.png"),
                      env={"HF_HUB_CACHE": str(tmp_path), "MODELSCOPE_CACHE": str(tmp_path),
                           "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert time.monotonic() - started < 60
    assert result.returncode == 3
    assert result.stderr.startswith("imagegen: error: model stabilityai/sdxl-turbo is not available")
    assert "the Hugging Face hub:" in result.stderr
    assert result.stderr.count("\n") == 1


def test_info_on_a_file_without_parameters_or_not_an_image(tmp_path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    (tmp_path / "text.png").write_text("hello")
    assert imagegen("info", str(tmp_path / "plain.png")).returncode == 1
    broken = imagegen("info", str(tmp_path / "text.png"))
    assert broken.returncode == 2 and broken.stderr.startswith("imagegen: error: ")


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom imagegen.cli import main\ntry:\n    main(['generate', '--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_the_main_command_runs_the_built_in_model(tmp_path) -> None:
    """README's main command, offline with no cache at all: the built-in digits model ships with imagegen."""
    out = tmp_path / "seven.png"
    result = imagegen("generate", "7", "--recipe", "digits", "-o", str(out), "--seed", "3",
                      env={"HF_HUB_CACHE": str(tmp_path / "none"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.size == (256, 256)
    assert "Steps: 15, Sampler: DPM++ 2M, CFG scale: 1.5, Seed: 3, Size: 256x256, Model: imagegen/digits" \
        in image.info["parameters"]


def test_digit_names_raw_size_and_grid(tmp_path) -> None:
    result = imagegen("generate", "digit seven", "-n", "16", "--grid", "--width", "8", "--height", "8",
                      "--seed", "1", "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert len(paths) == 17 and paths[-1].endswith("00000-1-grid.png")
    assert Image.open(paths[0]).size == (8, 8)
    assert Image.open(paths[-1]).size == (32, 32)
    seven = imagegen("generate", "seven", "--width", "8", "--height", "8", "--seed", "1", "-o",
                     str(tmp_path / "seven.png"), "-q")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "seven.png")), np.asarray(Image.open(paths[0])))
    assert seven.returncode == 0


def test_unknown_digit_lists_what_the_model_knows() -> None:
    result = imagegen("generate", "a cat", "--recipe", "digits")
    assert result.returncode == 2
    assert "this model knows no class 'a cat'; it knows 0: 0, zero, digit 0" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_img2img_from_the_command_line(generated, tmp_path) -> None:
    out = tmp_path / "fox-img2img.png"
    result = imagegen("generate", "a red fox, oil painting", *FAST, "--steps", "2", "--strength", "0.5",
                      "--init-image", str(generated), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "Denoising strength: 0.5," in Image.open(out).info["parameters"]
    missing = imagegen("generate", "a fox", *FAST, "--steps", "2", "--init-image", str(tmp_path / "missing.png"))
    assert missing.returncode == 2 and "init image" in missing.stderr and "does not exist" in missing.stderr


@pytest.mark.parametrize("where", ["afile/x.png", "adir.png"])
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, where) -> None:
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "adir.png").mkdir()
    result = imagegen("generate", "7", "-o", str(tmp_path / where), "-q")
    assert result.returncode == 1
    assert result.stderr.startswith("imagegen: error: cannot write ") and result.stderr.count("\n") == 1


def test_a_model_folder_for_another_recipe_is_refused_before_loading(sdxl_models) -> None:
    result = imagegen("generate", "a cat", "--model", "stabilityai/sdxl-turbo")
    assert result.returncode == 2
    assert "holds a StableDiffusionXLPipeline" in result.stderr and "cannot use" in result.stderr


@pytest.mark.slow
def test_replaying_an_img2img_image_asks_for_its_init_image(generated, tmp_path) -> None:
    out = tmp_path / "i2i.png"
    assert imagegen("generate", "a fox", *FAST, "--steps", "2", "--strength", "0.5", "--init-image",
                    str(generated), "-o", str(out)).returncode == 0
    result = imagegen("generate", "--from", str(out))
    assert result.returncode == 2 and "strength applies to an init image" in result.stderr
    again = tmp_path / "again.png"
    assert imagegen("generate", "--from", str(out), "--init-image", str(generated), "-o", str(again)).returncode == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


@pytest.mark.slow
def test_loras_and_two_stage_recipes_from_the_command_line(sd15_models, cascade_models, tmp_path) -> None:
    from tiny_sd15 import write_loras

    write_loras(tmp_path / "loras")
    env = {"IMAGEGEN_LORA_DIR": str(tmp_path / "loras")}
    sd15 = imagegen("generate", "a cat <lora:sd15_kohya:0.6>", "--recipe", "sd15", "--lora", "sd15_peft:0.3",
                    "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "-o", str(tmp_path / "sd.png"),
                    "-q", env=env)
    assert sd15.returncode == 0, sd15.stderr
    info = imagegen("info", str(tmp_path / "sd.png")).stdout
    assert info.startswith("a cat <lora:sd15_peft:0.3> <lora:sd15_kohya:0.6>\n")
    assert 'Lora hashes: "sd15_peft: ' in info
    replay = imagegen("generate", "--from", str(tmp_path / "sd.png"), "-o", str(tmp_path / "again.png"), "-q", env=env)
    assert replay.returncode == 0, replay.stderr
    assert Image.open(tmp_path / "again.png").tobytes() == Image.open(tmp_path / "sd.png").tobytes()
    cascade = imagegen("generate", "a cat", "--recipe", "stable-cascade", "--steps", "2", "--decoder-steps", "2",
                       "--width", "128", "--height", "128", "-o", str(tmp_path / "c.png"), "-q")
    assert cascade.returncode == 0, cascade.stderr
    assert "Decoder steps: 2" in imagegen("info", str(tmp_path / "c.png")).stdout


def test_replaying_a_digits_image_stays_on_the_built_in_path(tmp_path) -> None:
    """--from names the recipe's own scheduler ("DPM++ 2M"): kept as is, it stays the built-in, diffusers-free
    sampler, so replaying an image is as fast as making it, and gives it back exactly."""
    import imagegen as package

    first = package.generate("7", seed=3)[0].save(tmp_path / "first.png")
    replay = ("import sys; from imagegen.cli import main; code = main(sys.argv[1:]); "
              "print('diffusers' in sys.modules); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", replay, "generate", "--from", str(first), "-o",
                             str(tmp_path / "again.png"), "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(tmp_path / "again.png")))


def test_bare_fast_means_every_method_that_applies(sdxl_models, taesd_models, tmp_path, capsys) -> None:
    from imagegen.cli import main
    from imagegen.outputs.metadata import parse_infotext

    assert main(["generate", "a fox", *FAST, "--fast", "-q", "-o", str(tmp_path / "fox.png")]) == 0
    from imagegen.models.devices import cpu_has_bf16

    fast = parse_infotext(Image.open(tmp_path / "fox.png").info["parameters"]).params["Fast"]
    assert fast == ("tiny-vae,bf16" if cpu_has_bf16() else "tiny-vae")
    assert main(["generate", "7", "--fast", "-q", "-o", str(tmp_path / "seven.png")]) == 0
    assert "imagegen: warning: --fast tiny-vae, bf16, step-cache: does not apply to recipe digits; ignored" in \
        capsys.readouterr().err


def test_preview_file_is_rewritten_and_the_result_is_the_same(sdxl_models, tmp_path, capsys, monkeypatch) -> None:
    from imagegen.cli import main

    monkeypatch.setattr("imagegen.engine.PREVIEW_INTERVAL_S", 0.0)  # a preview at every step, even this quick one
    assert main(["generate", "a fox", *FAST, "-q", "-o", str(tmp_path / "plain.png")]) == 0
    assert main(["generate", "a fox", *FAST, "-q", "-o", str(tmp_path / "fox.png"), "--preview",
                 str(tmp_path / "live.jpg")]) == 0
    assert Image.open(tmp_path / "live.jpg").format == "JPEG"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fox.png", "live.jpg", "plain.png"]  # no leftovers
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "fox.png")),
                                  np.asarray(Image.open(tmp_path / "plain.png")))
    assert main(["generate", "a fox", *FAST, "--preview", str(tmp_path / "live.gif")]) == 2
    assert "--preview: name a .png, .jpg, .jpeg, .webp file" in capsys.readouterr().err
