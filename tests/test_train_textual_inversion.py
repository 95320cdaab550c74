"""Exercise 3a on the tiny pipeline: only the new word changes, and its file loads in diffusers."""

import json

import pytest
import torch
from safetensors.torch import load_file

import exercise3a_train_textual_inversion as trainer
from tests.helpers import run_main


def ti_args(tiny_pipeline_dir, instance_dir, tmp_path, *extra):
    return ["--base-model", str(tiny_pipeline_dir), "--instance-dir", str(instance_dir), "--initializer-token", "a",
            "--resolution", "32", "--steps", "2", "--adapter-dir", str(tmp_path / "ti"),
            "--output-dir", str(tmp_path / "out"), "--progress-every", "1000", *[str(e) for e in extra]]


def test_only_the_new_word_changes(tiny_pipeline_dir, instance_dir, tmp_path):
    from common.pipeline import load_pipeline

    original = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    table_before = original.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in original.unet.state_dict().items()}
    pipe, vector = trainer.main(ti_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 8,
                                        "--learning-rate", 1e-2))
    table_after = pipe.text_encoder.get_input_embeddings().weight
    rows = table_before.shape[0]
    assert table_after.shape[0] == rows + 1
    assert torch.equal(table_after[:rows], table_before)  # bitwise: no other word moved
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items())
    start = table_before[original.tokenizer("a", add_special_tokens=False).input_ids].mean(0)
    assert not torch.allclose(vector.detach(), start)  # the new word did learn
    summary = json.loads((tmp_path / "out" / "exercise3a_summary.json").read_text())
    assert summary["optimizer_updates"] == 8 and summary["token"] == "<african-fabric>"
    assert (tmp_path / "out" / "exercise3a_loss_curve.png").is_file()


def test_embedding_file_loads_with_diffusers(tiny_pipeline_dir, instance_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    assert run_main(trainer, ti_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2,
                                     "--progress-every", 1)) == 0
    file = tmp_path / "ti" / "learned_embeds.safetensors"
    saved = load_file(str(file))
    assert list(saved) == ["<african-fabric>"] and saved["<african-fabric>"].shape == (32,)
    assert len(list((tmp_path / "out" / "training_progress_ti").glob("step_*.png"))) == 2
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    pipe.load_textual_inversion(str(file))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<african-fabric>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], saved["<african-fabric>"])

    # the same word in AUTOMATIC1111's layout, which plain diffusers reads too, given the token
    web_ui_file = tmp_path / "ti" / "african-fabric.safetensors"
    assert list(load_file(str(web_ui_file))) == ["emb_params"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir, safety_checker=None)
    pipe.load_textual_inversion(str(web_ui_file), token="<african-fabric>")
    token_id = pipe.tokenizer.convert_tokens_to_ids("<african-fabric>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], saved["<african-fabric>"])

    # the model card: its metadata reads back, and it shows the last progress grid, copied beside it
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "ti" / "README.md")
    assert card.data.base_model == str(tiny_pipeline_dir) and "textual-inversion" in card.data.tags
    assert "<african-fabric>" in card.data.instance_prompt and "(progress_grid.png)" in card.text
    last_grid = sorted((tmp_path / "out" / "training_progress_ti").glob("step_*.png"))[-1]
    assert (tmp_path / "ti" / "progress_grid.png").read_bytes() == last_grid.read_bytes()


def test_textual_inversion_resume_is_exact(tiny_pipeline_dir, instance_dir, tmp_path):
    for name, runs in {"straight": [["--max-train-steps", 4]],
                       "split": [["--max-train-steps", 2], ["--max-train-steps", 4, "--resume", "latest"]]}.items():
        for extra in runs:
            assert run_main(trainer, ti_args(tiny_pipeline_dir, instance_dir, tmp_path / name, *extra)) == 0
    a = load_file(str(tmp_path / "straight" / "ti" / "learned_embeds.safetensors"))
    b = load_file(str(tmp_path / "split" / "ti" / "learned_embeds.safetensors"))
    assert torch.allclose(a["<african-fabric>"], b["<african-fabric>"], atol=1e-6)


def test_ti_vs_lora_comparison(tiny_pipeline_dir, tiny_lora_dir, tmp_path):
    import exercise3_compare
    from PIL import Image
    from safetensors.torch import save_file

    save_file({"<african-fabric>": torch.randn(32)}, str(tmp_path / "learned_embeds.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "exercise3a_summary.json").write_text(json.dumps({"wall_seconds": 12.0, "optimizer_updates": 30}))
    assert run_main(exercise3_compare, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir,
                                        "--ti-file", tmp_path / "learned_embeds.safetensors",
                                        "--output-dir", out, "--steps", 2, "--resolution", 32]) == 0
    width, height = Image.open(out / "exercise3_ti_vs_lora.png").size
    assert 0.9 < width / height < 2.0  # four columns, three rows


def test_comparison_draws_the_lora_at_lora_weight_and_asks_with_token(tiny_pipeline_dir, tiny_lora_dir, tmp_path,
                                                                       monkeypatch):
    import numpy as np

    import exercise3_compare
    from safetensors.torch import save_file

    save_file({"<african-fabric>": torch.randn(32)}, str(tmp_path / "learned_embeds.safetensors"))
    drawn = {}
    real_generate = exercise3_compare.generate

    def recording(pipe, prompts, seeds, desc, **settings):
        images = real_generate(pipe, prompts, seeds, desc=desc, **settings)
        drawn[desc] = (prompts, [np.asarray(image) for image in images])
        return images

    monkeypatch.setattr(exercise3_compare, "generate", recording)
    assert run_main(exercise3_compare, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir,
                                        "--ti-file", tmp_path / "learned_embeds.safetensors", "--lora-weight", 0,
                                        "--token", "zwx", "--output-dir", tmp_path, "--steps", 2,
                                        "--resolution", 32]) == 0
    assert all("zwx african fabric pattern" in prompt for prompt in drawn["base"][0] + drawn["LoRA"][0])
    # at weight 0 the LoRA changes nothing: its row is the base model's
    assert all(np.array_equal(a, b) for a, b in zip(drawn["base"][1], drawn["LoRA"][1]))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_the_word_in_fp32_and_draws_progress_grids(tiny_pipeline_dir, instance_dir, tmp_path,
                                                                          precision):
    """The CUDA course's half-precision path on the CPU (fp16 with its gradient scaler, as on CUDA)."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    pipe, vector = trainer.main(ti_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2,
                                        "--progress-every", 1, "--mixed-precision", precision))
    assert pipe.unet.dtype == pipe.text_encoder.dtype == half and vector.dtype == torch.float32
    assert len(list((tmp_path / "out" / "training_progress_ti").glob("step_*.png"))) == 2
    saved = load_file(str(tmp_path / "ti" / "learned_embeds.safetensors"))["<african-fabric>"]
    assert saved.dtype == torch.float32 and torch.isfinite(saved).all()
    summary = json.loads((tmp_path / "out" / "exercise3a_summary.json").read_text())
    assert summary["mixed_precision"] == precision and summary["frozen_weights_dtype"] == str(half)[len("torch."):]
    scaler = json.loads((tmp_path / "ti" / "checkpoint-2" / "training_state.json").read_text())["grad_scaler"]
    assert (scaler is not None) == (precision == "fp16")


def test_min_timestep_past_the_schedule_is_one_line_and_writes_nothing(tiny_pipeline_dir, instance_dir, tmp_path,
                                                                        capsys):
    assert run_main(trainer, ti_args(tiny_pipeline_dir, instance_dir, tmp_path, "--min-timestep", 1000)) == 1
    assert "leaves no timestep to train on" in capsys.readouterr().err
    assert not (tmp_path / "ti" / "learned_embeds.safetensors").exists()


def test_training_draws_only_timesteps_from_min_timestep(tiny_pipeline_dir, instance_dir, tmp_path, monkeypatch):
    import common.forward_diffusion

    drawn = []
    original = common.forward_diffusion.noisy_batch

    def recording(*args, **kwargs):
        noisy, timesteps, target = original(*args, **kwargs)
        drawn.extend(timesteps.tolist())
        return noisy, timesteps, target

    monkeypatch.setattr(trainer, "noisy_batch", recording)
    trainer.main(ti_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 12, "--min-timestep", 900))
    assert len(drawn) == 12 and min(drawn) >= 900
    summary = json.loads((tmp_path / "out" / "exercise3a_summary.json").read_text())
    assert summary["settings"]["min_timestep"] == 900  # a resume with another range is refused
