"""common/evaluation_loss.py: the same questions at every evaluation, and nothing drawn from training's stream."""

import json

import torch
from safetensors.torch import load_file

import exercise3b_train_lora as trainer
from tests.helpers import run_main, train_args


def evaluation_of(pipe, images, pairs=3):
    from diffusers import DDPMScheduler

    from common.encoded_examples import encode_prompt
    from common.evaluation_loss import EvaluationLoss

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return EvaluationLoss(pipe.vae, scheduler, {"instance": images, "class": images[::-1]},
                          lambda role: encode_prompt(pipe, f"a {role} prompt", torch.device("cpu")),
                          pairs_per_image=pairs, device=torch.device("cpu"), dtype=torch.float32, batch_size=5)


def test_the_set_is_fixed_and_spread_over_the_timesteps(tiny_pipeline_dir, instance_dir):
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images

    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    images = load_training_images(instance_dir, 32)
    evaluation = evaluation_of(pipe, images)
    with torch.no_grad():
        first, second = evaluation(pipe.unet), evaluation(pipe.unet)
    assert first == second and set(first) == {"instance", "class"}  # the same weights: the same loss
    # a fresh set from the same seed asks the same questions; pair k of every image in the k-th third
    _, noise, timesteps = evaluation.examples["instance"]
    _, again_noise, again_timesteps = evaluation_of(pipe, images).examples["instance"]
    assert torch.equal(noise, again_noise) and torch.equal(timesteps, again_timesteps)
    assert [int(t) // 334 for t in timesteps[:3]] == [0, 1, 2] and len(timesteps) == 3 * len(images)
    with torch.no_grad():
        pipe.unet.conv_out.bias += 0.1  # another model: another answer
        assert evaluation(pipe.unet)["instance"] != first["instance"]


def test_evaluating_leaves_training_bit_identical(tiny_pipeline_dir, instance_dir, tmp_path):
    adapters = []
    for name, every in (("often", 1), ("rarely", 1000)):
        assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path / name, "--max-train-steps", 3,
                                            "--progress-every", every)) == 0
        adapters.append(load_file(str(tmp_path / name / "lora" / "adapter_model.safetensors")))
        evaluated = json.loads((tmp_path / name / "out" / "exercise3b_summary.json").read_text())["evaluation_loss"]
        assert evaluated["update"] == ([0, 1, 2, 3] if every == 1 else [0, 3])
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])


def test_the_class_curve_is_drawn_without_prior_preservation_too(tiny_pipeline_dir, instance_dir, tmp_path):
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2,
                                        "--no-prior-preservation")) == 0
    summary = json.loads((tmp_path / "out" / "exercise3b_summary.json").read_text())
    assert len(summary["evaluation_loss"]["class"]) == 2 and "prior" not in summary["final_smoothed_loss"]
