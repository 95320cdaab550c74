"""common/base_model.py: what "auto" means on each base model."""

import pytest

import exercise3b_train_lora as trainer
from common.base_model import MICRO, SD15, TRAINING_DEFAULTS, resolve_training_defaults


def resolved(flags, base):
    args = trainer.parse_args(flags)
    args.base_model = base  # what resolve_base names the chosen base
    return resolve_training_defaults(args)


@pytest.mark.parametrize("flag", ["train_text_encoder", "train_identifier"])
def test_text_encoder_and_identifier_training_follow_the_base_model_unless_asked(flag):
    assert getattr(resolved([], MICRO), flag) is TRAINING_DEFAULTS[MICRO][flag]
    assert resolved([], MICRO).train_identifier is True  # micro's text encoder needs the help
    assert getattr(resolved([], SD15), flag) is False  # diffusers' default
    assert getattr(resolved([], "some/other-model"), flag) is False  # any other base: SD 1.5's
    option = "--" + flag.replace("_", "-")
    for base in (MICRO, SD15):
        assert getattr(resolved([option], base), flag) is True
        assert getattr(resolved([option.replace("--", "--no-")], base), flag) is False


def test_proportion_empty_prompts_follows_the_base_model_and_must_leave_some_instance_captions(capsys):
    assert resolved([], MICRO).proportion_empty_prompts == TRAINING_DEFAULTS[MICRO]["proportion_empty_prompts"]
    assert resolved([], SD15).proportion_empty_prompts == 0.0  # diffusers' default
    assert resolved(["--proportion-empty-prompts", "0.1"], SD15).proportion_empty_prompts == 0.1
    assert resolved(["--proportion-empty-prompts", "0.05"], MICRO).proportion_empty_prompts == 0.05
    with pytest.raises(SystemExit):
        trainer.parse_args(["--proportion-empty-prompts", "1"])
    assert "must be at least 0 and below 1" in capsys.readouterr().err


def test_offset_noise_follows_the_base_model_it_was_pretrained_with(capsys):
    assert resolved([], MICRO).offset_noise == TRAINING_DEFAULTS[MICRO]["offset_noise"] > 0
    assert resolved([], SD15).offset_noise == 0.0  # SD 1.5 was pretrained without it
    assert resolved(["--offset-noise", "0"], MICRO).offset_noise == 0.0
    with pytest.raises(SystemExit):
        trainer.parse_args(["--offset-noise", "-0.1"])
    assert "--offset-noise" in capsys.readouterr().err


def test_lora_shape_follows_the_base_model_at_the_same_scale_unless_asked():
    micro, sd15 = resolved([], MICRO), resolved([], SD15)
    assert (sd15.rank, sd15.lora_alpha, sd15.lora_targets) == (4, 32, ["to_q", "to_k", "to_v", "to_out.0"])
    assert {"conv1", "conv2"} <= set(micro.lora_targets) and micro.rank > sd15.rank
    assert micro.lora_alpha / micro.rank == sd15.lora_alpha / sd15.rank == 8
    asked = resolved(["--rank", "8", "--lora-alpha", "16", "--lora-targets", "to_q", "to_v"], MICRO)
    assert (asked.rank, asked.lora_alpha, asked.lora_targets) == (8, 16, ["to_q", "to_v"])
    assert resolved(["--lora-targets", "auto"], SD15).lora_targets == sd15.lora_targets
    micro.lora_targets.append("conv_in")  # the table's list is the run's own copy
    assert "conv_in" not in TRAINING_DEFAULTS[MICRO]["lora_targets"]


def test_help_texts_say_what_auto_means_on_each_base():
    from common.base_model import auto_help

    assert auto_help("train_identifier") == "auto: on for micro, off for SD 1.5"
    assert auto_help("offset_noise") == "auto: 0.1 for micro, 0 for SD 1.5"
    assert auto_help("rank") == "auto: 16 for micro, 4 for SD 1.5"


def test_textual_inversion_trains_on_the_noisy_end_on_micro_and_the_whole_schedule_on_sd15(capsys):
    import exercise3a_train_textual_inversion as ti_trainer

    def ti_resolved(flags, base):
        args = ti_trainer.parse_args(flags)
        args.base_model = base
        return resolve_training_defaults(args)

    assert ti_resolved([], MICRO).min_timestep == TRAINING_DEFAULTS[MICRO]["min_timestep"] > 0
    assert ti_resolved([], SD15).min_timestep == 0  # diffusers' textual inversion: every timestep
    assert ti_resolved(["--min-timestep", "0"], MICRO).min_timestep == 0
    with pytest.raises(SystemExit):
        ti_trainer.parse_args(["--min-timestep", "-1"])
    assert "must be 0 or more" in capsys.readouterr().err


def test_textual_inversion_length_follows_the_base_model_unless_asked(capsys):
    import exercise3a_train_textual_inversion as ti_trainer
    from common.base_model import TEXTUAL_INVERSION_DEFAULTS

    def ti_resolved(flags, base):
        args = ti_trainer.parse_args(flags)
        args.base_model = base
        return resolve_training_defaults(args, TEXTUAL_INVERSION_DEFAULTS)

    micro, sd15 = ti_resolved([], MICRO), ti_resolved([], SD15)
    assert (sd15.max_train_steps, sd15.learning_rate) == (3000, 5e-4)  # diffusers' textual inversion example
    assert micro.max_train_steps < sd15.max_train_steps and micro.learning_rate > sd15.learning_rate
    asked = ti_resolved(["--max-train-steps", "200", "--learning-rate", "2e-3"], MICRO)
    assert (asked.max_train_steps, asked.learning_rate) == (200, 2e-3)
    with pytest.raises(SystemExit):
        ti_trainer.parse_args(["--help"])
    assert "optimizer updates; auto: 1500 for micro, 3000 for SD 1.5" in " ".join(capsys.readouterr().out.split())
    # exercise3b's flags of the same names keep the course's fixed values
    lora = trainer.parse_args([])
    assert (lora.max_train_steps, lora.learning_rate) == (800, 1e-4)


@pytest.mark.parametrize("script", ["exercise1_generate", "generate_dreambooth_morph", "exercise3b_train_lora"])
def test_sampling_steps_follow_the_base_model_unless_asked(script, capsys):
    import importlib

    import torch

    from common.base_model import SAMPLING_STEPS, resolve_base

    module = importlib.import_module(script)

    def steps(flags):
        args = module.parse_args(flags)
        resolve_base(args, torch.device("cpu"))
        return args.steps

    assert steps(["--base-model", MICRO]) == SAMPLING_STEPS[MICRO] < steps(["--base-model", SD15]) == 30
    assert steps(["--base-model", "some-org/other-model"]) == 30  # any other base: SD 1.5's
    assert steps(["--base-model", MICRO, "--steps", "30"]) == 30
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    assert f"auto: {SAMPLING_STEPS[MICRO]} for micro, 30 for SD 1.5" in " ".join(capsys.readouterr().out.split())
