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
    assert getattr(resolved([], MICRO), flag) is True
    assert getattr(resolved([], SD15), flag) is False  # diffusers' default
    assert getattr(resolved([], "some/other-model"), flag) is False  # any other base: SD 1.5's
    option = "--" + flag.replace("_", "-")
    for base in (MICRO, SD15):
        assert getattr(resolved([option], base), flag) is True
        assert getattr(resolved([option.replace("--", "--no-")], base), flag) is False


def test_proportion_empty_prompts_follows_the_base_model_and_must_leave_some_instance_captions(capsys):
    assert resolved([], MICRO).proportion_empty_prompts == TRAINING_DEFAULTS[MICRO]["proportion_empty_prompts"] > 0
    assert resolved([], SD15).proportion_empty_prompts == 0.0  # diffusers' default
    assert resolved(["--proportion-empty-prompts", "0.1"], SD15).proportion_empty_prompts == 0.1
    with pytest.raises(SystemExit):
        trainer.parse_args(["--proportion-empty-prompts", "1"])
    assert "must be at least 0 and below 1" in capsys.readouterr().err


def test_help_texts_say_what_auto_means_on_each_base():
    from common.base_model import auto_help

    assert auto_help("train_text_encoder") == "auto: on for micro, off for SD 1.5"
    assert auto_help("proportion_empty_prompts") == "auto: 0.05 for micro, 0 for SD 1.5"


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
