"""What goes wrong on a student's machine: damaged checkpoints, unwritable folders, a wrong base model,
16-bit and transparent images, checkpoints piling up, and a training killed outright (kill -9)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import exercise1_generate
import exercise3a_train_textual_inversion as textual_inversion
import exercise3b_train_lora as trainer
from tests.helpers import REPO, run_main, train_args
from tests.test_scripts import expect_refusal
from tests.test_train_lora import assert_same_adapters
from tests.test_train_textual_inversion import ti_args

UNWRITABLE = "/proc/no-such-folder/out"  # /proc refuses new folders, even to root


# --- checkpoints -------------------------------------------------------------------------------

def cut_short(path, size=100):
    path.write_bytes(path.read_bytes()[:size])


def test_resume_latest_passes_over_a_damaged_newest_checkpoint(tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    """The newest checkpoint's generator file is cut to 100 bytes (a full disk, an interrupted copy):
    --resume latest says so in one line and resumes from the one before, reaching the straight run's adapter."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, straight, "--max-train-steps", 6)) == 0
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 4,
                                        "--checkpoint-every", 2)) == 0
    cut_short(split / "lora" / "checkpoint-4" / "generator_rank0.safetensors")
    capsys.readouterr()
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 6,
                                        "--resume", "latest")) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint-4" in warnings[0] and "checkpoint-2" in warnings[0], warnings
    assert "generator_rank0.safetensors" in warnings[0]
    assert_same_adapters(straight, split)


def test_resume_from_a_named_damaged_checkpoint_names_the_file_and_the_intact_one(tiny_pipeline_dir, instance_dir,
                                                                                    tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, run, "--max-train-steps", 4,
                                        "--checkpoint-every", 2)) == 0
    cut_short(run / "lora" / "checkpoint-4" / "trainable.safetensors", 300)
    capsys.readouterr()
    code = run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, run, "--max-train-steps", 6,
                                        "--resume", run / "lora" / "checkpoint-4"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "checkpoint-4/trainable.safetensors is damaged" in err and "checkpoint-2" in err, err


def test_a_state_file_without_its_fields_is_damage_too(tmp_path):
    from common.checkpoints import damage

    (tmp_path / "training_state.json").write_text('{"update": 3}')
    assert damage(tmp_path) == ("training_state.json", "no settings")


def test_checkpoints_total_limit_keeps_the_newest(tiny_pipeline_dir, instance_dir, tmp_path):
    run = tmp_path / "run"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, run, "--max-train-steps", 8,
                                        "--checkpoint-every", 2, "--checkpoints-total-limit", 2)) == 0
    assert sorted(p.name for p in (run / "lora").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    unlimited = tmp_path / "unlimited"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, unlimited, "--max-train-steps", 8,
                                        "--checkpoint-every", 2)) == 0
    assert len(list((unlimited / "lora").glob("checkpoint-*"))) == 4  # the default keeps every one


# --- folders and the order of checks ---------------------------------------------------------------

def test_unwritable_output_dir_stops_before_the_model_loads(tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    import common.pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(common.pipeline, "load_pipeline", no_loading)
    code = run_main(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", "none",
                                         "--output-dir", UNWRITABLE])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "--output-dir" in err and "cannot be written" in err, err


@pytest.mark.parametrize("flag", ["--adapter-dir", "--output-dir"])
@pytest.mark.parametrize("script", ["3a", "3b"])
def test_trainers_check_their_folders_before_loading(flag, script, tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    make_args, module = (ti_args, textual_inversion) if script == "3a" else (train_args, trainer)
    args = [str(a) for a in make_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2)]
    args[args.index(flag) + 1] = UNWRITABLE
    code = run_main(module, args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert flag in err and "cannot be written" in err, err


def test_a_missing_base_model_is_named_before_a_missing_lora(tmp_path, capsys):
    err = expect_refusal(exercise1_generate, ["--base-model", tmp_path / "nonexistent",
                                              "--lora-dir", tmp_path / "no_lora"], tmp_path, capsys,
                         "--base-model", "model_index.json")
    assert "LoRA" not in err and "exercise3b" not in err


# --- images --------------------------------------------------------------------------------------

def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from common.training_images import load_training_images

    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(gradient).save(tmp_path / "scan16.png")
    assert Image.open(tmp_path / "scan16.png").mode.startswith("I")
    pixels = np.asarray(load_training_images(tmp_path, 64)[0], np.float32)
    assert abs(pixels.mean() - 127.5) < 3  # convert("RGB") alone gives about 254 (clipped to white)
    assert pixels[:, 0].mean() < 5 and pixels[:, -1].mean() > 250  # still running dark to light


def test_transparent_images_are_filled_with_the_background_and_named(tmp_path, capsys):
    from common.training_images import load_training_images

    cut_out = np.zeros((64, 64, 4), np.uint8)  # transparent black, as background removers leave it
    cut_out[16:48, 16:48] = (200, 40, 40, 255)  # the subject, opaque
    Image.fromarray(cut_out).save(tmp_path / "cutout.png")
    Image.new("RGBA", (64, 64), (10, 200, 10, 255)).save(tmp_path / "opaque_rgba.png")
    images = load_training_images(tmp_path, 64)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "transparent" in line]
    assert len(warnings) == 1 and "cutout.png" in warnings[0] and "opaque_rgba.png" not in warnings[0]
    cutout = np.asarray(images[0])
    assert tuple(cutout[0, 0]) == (255, 255, 255) and tuple(cutout[32, 32]) == (200, 40, 40)
    black = np.asarray(load_training_images(tmp_path, 64, alpha_background=(0, 0, 0))[0])
    assert tuple(black[0, 0]) == (0, 0, 0)


def test_alpha_background_flag_parses_names_and_numbers():
    args = trainer.parse_args(["--alpha-background", "12,34,56"])
    assert args.alpha_background == (12, 34, 56)
    assert trainer.parse_args([]).alpha_background == (255, 255, 255)
    with pytest.raises(SystemExit):
        trainer.parse_args(["--alpha-background", "teal-ish"])


# --- kill -9 ---------------------------------------------------------------------------------------

def wait_for_checkpoint_beyond(folder, update, process, timeout=300):
    """Poll until a complete checkpoint-N with N > update is there; return N. The timeout is generous: a
    loaded machine (CI beside other jobs) starts the subprocess and its imports slowly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if (p / "training_state.json").is_file()]
        if done and max(done) > update:
            return max(done)
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint beyond {update} in {timeout} s")


def test_kill_9_twice_and_resume_gives_the_straight_runs_adapter(tiny_pipeline_dir, instance_dir, tmp_path):
    """kill -9 leaves no chance to save anything: whatever was on disk must be enough. Two kills at
    different updates, each after a new checkpoint appears, then resumes; the adapter must be the one
    an uninterrupted run trains."""
    steps, flags = 60, ["--train-text-encoder", "--train-identifier"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, straight, "--max-train-steps", steps,
                                        *flags)) == 0
    command = [sys.executable, str(REPO / "exercise3b_train_lora.py"),
               *map(str, train_args(tiny_pipeline_dir, instance_dir, killed, "--max-train-steps", steps,
                                    "--checkpoint-every", 3, *flags))]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    reached = 0
    for _ in range(2):
        process = subprocess.Popen(command + (["--resume", "latest"] if reached else []), env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached = wait_for_checkpoint_beyond(killed / "lora", reached + 3, process)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        assert reached < steps
    finished = subprocess.run(command + ["--resume", "latest"], env=environment, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_adapters(straight, killed, ["adapter_model.safetensors", "text_encoder/adapter_model.safetensors",
                                            "identifier_embeddings.safetensors", "pytorch_lora_weights.safetensors"])
