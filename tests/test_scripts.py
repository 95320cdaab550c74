"""The exercise scripts, end to end on the tiny pipeline, and their answers to bad input."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import exercise1_generate
import exercise2_explore
import generate_dreambooth_morph
from tests.helpers import REPO, TINY, run_main


def test_exercise1_writes_every_picture(tiny_pipeline_dir, tiny_lora_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir,
                                         "--output-dir", out, *TINY]) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    assert "device cpu" in banner and "float32" in banner and "32 layers, scale 8.0" in banner
    variations = sorted((out / "exercise1_variations").glob("*.png"))
    assert [path.name[:3] for path in variations] == [f"{i:02d}_" for i in range(1, 10)]
    assert variations[1].name == "02_dress.png"
    assert all(Image.open(path).size == (256, 256) for path in variations)  # 32 px drawn, enlarged 8 times
    assert Image.open(out / "exercise1_grid_simple.png").size == (768, 768)
    for name in ["exercise1_output.png", "exercise1_with_vs_without_token.png"]:
        width, height = Image.open(out / name).size
        assert width > 200 and height > 200, name
    wide, tall = Image.open(out / "exercise1_with_vs_without_token.png").size
    assert wide > 3 * tall  # nine columns, two rows
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_exercise1_same_seed_same_picture(tiny_pipeline_dir, tmp_path):
    for run in ("first", "second"):
        assert run_main(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", "none",
                                             "--output-dir", tmp_path / run, *TINY]) == 0
    first = Image.open(tmp_path / "first" / "exercise1_grid_simple.png").tobytes()
    assert first == Image.open(tmp_path / "second" / "exercise1_grid_simple.png").tobytes()


def test_exercise2_all_parts(tiny_pipeline_dir, tiny_lora_dir, tmp_path):
    out = tmp_path / "out"
    assert run_main(exercise2_explore, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir,
                                        "--output-dir", out, "--negative-prompt", "blurry", *TINY]) == 0
    guidance = Image.open(out / "exercise2_guidance_comparison.png").size
    assert guidance[0] > 3 * guidance[1]  # one row of five
    for name in ["exercise2_style_grid.png", "exercise2_seed_comparison.png"]:
        width, height = Image.open(out / name).size
        assert 0.7 < width / height < 1.4, name  # three by three


def test_exercise2_single_part_writes_only_that_part(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    assert run_main(exercise2_explore, ["--base-model", tiny_pipeline_dir, "--lora-dir", "none", "--part", "c",
                                        "--output-dir", out, *TINY]) == 0
    # that part's picture, and the course page every script rewrites; none of the other parts'
    assert sorted(path.name for path in out.iterdir()) == ["exercise2_seed_comparison.png", "index.html"]


def test_morph_gif_loops_with_every_frame(tiny_pipeline_dir, tiny_lora_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(generate_dreambooth_morph, [
        "--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir, "--output-dir", out,
        "--frames", 10, "--keyframes", 3, "--batch-size", 4, *TINY]) == 0
    assert "3 cs per frame = 33.3 fps" in capsys.readouterr().out
    gif = Image.open(out / "dreambooth_morph.gif")
    assert gif.n_frames == 10
    assert gif.info["loop"] == 0
    assert gif.info["duration"] == 30
    assert gif.size == (256, 256)


@pytest.mark.parametrize("script", ["exercise1", "exercise2", "morph", "compare"])
def test_every_generation_script_runs_in_half_precision(script, tiny_pipeline_dir, tiny_lora_dir, tmp_path, capsys):
    """fp16 on CUDA is the course's main path; bf16 on the CPU runs the same half-precision code here:
    the weights, the LoRA loaded into them, the morph's own starting latents."""
    import torch
    from safetensors.torch import save_file

    import exercise3_compare

    module, extra = {
        "exercise1": (exercise1_generate, []), "exercise2": (exercise2_explore, ["--part", "a"]),
        "morph": (generate_dreambooth_morph, ["--frames", 3, "--keyframes", 3, "--batch-size", 3]),
        "compare": (exercise3_compare, ["--ti-file", tmp_path / "learned_embeds.safetensors"]),
    }[script]
    save_file({"<african-fabric>": torch.randn(32)}, str(tmp_path / "learned_embeds.safetensors"))
    out = tmp_path / "out"
    assert run_main(module, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir, "--precision", "bf16",
                             "--output-dir", out, *TINY, *extra]) == 0
    printed = capsys.readouterr().out
    if script == "exercise1":
        assert "bfloat16" in printed.splitlines()[0] and "32 layers, scale 8.0" in printed.splitlines()[0]
    pictures = [path for path in out.rglob("*") if path.suffix in (".png", ".gif")]
    assert pictures and all(Image.open(path).convert("RGB").getextrema() != ((0, 0),) * 3 for path in pictures)


def test_batch_size_auto_is_larger_on_cuda_and_for_small_images_and_a_number_stays_as_given():
    import torch

    from common.cli import resolve_batch_size

    for module, cpu, cuda in ((exercise1_generate, 1, 9), (generate_dreambooth_morph, 8, 16)):
        for device, resolution, expected in (("cpu", 512, cpu), ("cuda", 512, cuda), ("cpu", 64, cuda),
                                             ("cuda", 64, cuda)):
            args = module.parse_args(["--resolution", str(resolution)])
            assert args.batch_size == "auto" and resolve_batch_size(args, torch.device(device)) == expected
        args = module.parse_args(["--batch-size", "3", "--resolution", "64"])
        assert resolve_batch_size(args, torch.device("cuda")) == 3


def test_morph_latents_loop_back_through_every_keyframe():
    import torch

    keyframes = [torch.randn(4, 4, 4) for _ in range(5)]
    latents = generate_dreambooth_morph.loop_latents(keyframes, 450)
    assert latents.shape == (450, 4, 4, 4)
    for index, keyframe in enumerate(keyframes):
        assert torch.equal(latents[90 * index], keyframe)
    # The last frame is one step short of the start: the jump back to frame 0 is as
    # small as any other step of the last segment, so the loop has no seam.
    seam = (latents[0] - latents[-1]).norm()
    step = (latents[-1] - latents[-2]).norm()
    assert abs(seam - step) / step < 0.02


def test_gif_delay_is_whole_centiseconds():
    assert generate_dreambooth_morph.gif_delay(30) == 3
    assert generate_dreambooth_morph.gif_delay(25) == 4
    assert generate_dreambooth_morph.gif_delay(100) == 2  # browsers slow 0-1 cs down


# --- bad input: one line, exit 1, no output folder --------------------------------------------

def expect_refusal(module, args, tmp_path, capsys, *words):
    out = tmp_path / "out"
    code = run_main(module, [*args, "--output-dir", out, *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not out.exists(), "a refused run must not write outputs"
    return err


@pytest.mark.parametrize("module", [exercise1_generate, exercise2_explore, generate_dreambooth_morph])
def test_missing_adapter_folder(module, tiny_pipeline_dir, tmp_path, capsys):
    expect_refusal(module, ["--base-model", tiny_pipeline_dir, "--lora-dir", tmp_path / "models" / "fabric_lora"],
                   tmp_path, capsys, "exercise3b_train_lora.py", "adapter_model.safetensors", "adapter_config.json")


def test_empty_adapter_folder(tiny_pipeline_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    expect_refusal(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", tmp_path / "empty"],
                   tmp_path, capsys, "is empty")


def test_truncated_adapter(tiny_pipeline_dir, tiny_lora_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_lora_dir, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expect_refusal(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", broken],
                   tmp_path, capsys, "damaged or incomplete")


def test_adapter_for_another_base(tiny_pipeline_dir, tmp_path, capsys):
    from tests.helpers import tiny_unet, write_peft_lora

    wide = write_peft_lora(tmp_path / "wide", tiny_unet(cross_attention_dim=48))
    expect_refusal(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", wide],
                   tmp_path, capsys, "48-wide", "32-wide")


def test_local_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    expect_refusal(exercise1_generate, ["--base-model", tmp_path / "notamodel", "--lora-dir", "none"],
                   tmp_path, capsys, "model_index.json")


@pytest.mark.parametrize("flags,words", [
    (["--steps", "0"], "--steps"), (["--guidance", "-1"], "--guidance"),
    (["--resolution", "100"], "multiple of 8"), (["--part", "d"], "--part"),
])
def test_bad_numbers_stop_at_the_parser(flags, words, tmp_path, capsys):
    expect_refusal(exercise2_explore, flags, tmp_path, capsys, words)


def test_morph_needs_two_keyframes(tmp_path, capsys):
    expect_refusal(generate_dreambooth_morph, ["--keyframes", "1"], tmp_path, capsys, "at least 2")


def test_cuda_without_cuda(tiny_pipeline_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_refusal(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--device", "cuda"],
                   tmp_path, capsys, "--device cpu")


def test_command_line_offline_hub_model_is_one_line_without_traceback(tmp_path):
    """Through a real shell command: exit 1, one line on stderr, no traceback, nothing written."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty_cache"))
    result = subprocess.run(
        [sys.executable, "exercise1_generate.py", "--base-model", "runwayml/stable-diffusion-v1-5",
         "--lora-dir", "none", "--output-dir", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--base-model" in error_lines[0] and "cache" in error_lines[0]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in result.stdout  # the renamed id, announced
    assert not (tmp_path / "out").exists()


def test_help_lists_the_common_flags():
    result = subprocess.run([sys.executable, "generate_dreambooth_morph.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ["--base-model", "--lora-dir", "--ti-file", "--steps", "--guidance", "--seed", "--resolution",
                 "--device", "--output-dir", "--frames", "--fps", "--keyframes"]:
        assert flag in result.stdout, flag
    assert "(default: 450)" in result.stdout
