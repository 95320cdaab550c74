"""Exercise 3b on the tiny pipeline: the math, learning, exact resume, saved formats, bad input."""

import functools
import json
import shutil

import pytest
import torch

import exercise3b_train_lora as trainer
from common.adapters import injected_lora_layers, load_lora
from common.encoded_examples import encode_prompt
from tests.helpers import run_main, train_args, unet_output


def train_straight_and_split(tiny_pipeline_dir, instance_dir, tmp_path, flags):
    """Six updates in one run (tmp_path/straight), and three, then three more resumed (tmp_path/split)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, straight, "--max-train-steps", 6,
                                        *flags)) == 0
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 3,
                                        "--checkpoint-every", 3, *flags)) == 0
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 6,
                                        "--resume", "latest", *flags)) == 0
    return straight, split


def assert_same_adapters(first, second, files=("adapter_model.safetensors",)):
    """The adapters two runs saved hold the same weights (up to another summation order's last bits)."""
    from safetensors.torch import load_file

    for name in files:
        a, b = load_file(str(first / "lora" / name)), load_file(str(second / "lora" / name))
        assert a and set(a) == set(b)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)


@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "unet+text-encoder+identifier"])
def test_resume_continues_exactly(tiny_pipeline_dir, instance_dir, tmp_path, text_encoder):
    from safetensors.torch import load_file

    flags = ["--train-text-encoder", "--train-identifier"] if text_encoder else ["--no-train-text-encoder"]
    straight, split = train_straight_and_split(tiny_pipeline_dir, instance_dir, tmp_path, flags)
    assert_same_adapters(straight, split, ["adapter_model.safetensors"] + (
        ["text_encoder/adapter_model.safetensors", "identifier_embeddings.safetensors"] if text_encoder else []))
    assert len(load_file(str(split / "lora" / "adapter_model.safetensors"))) == 64
    assert (split / "lora" / "text_encoder").exists() == text_encoder
    summary = json.loads((split / "out" / "exercise3b_summary.json").read_text())
    assert summary["optimizer_updates"] == 6
    # the evaluation curve goes on where it stopped: at updates 0 and 6 it matches the straight run's
    straight_curve = json.loads((straight / "out" / "exercise3b_summary.json").read_text())["evaluation_loss"]
    curve = summary["evaluation_loss"]
    assert curve["update"] == [0, 3, 6] and straight_curve["update"] == [0, 6]
    for role in ("instance", "class"):
        assert [curve[role][0], curve[role][2]] == pytest.approx(straight_curve[role], abs=1e-6)
    assert (summary["text_encoder_lora_layers"] > 0) == text_encoder
    assert summary["lora_layers"] == 32 + summary["text_encoder_lora_layers"]
    assert summary["settings"]["lora_alpha"] == 32
    assert (split / "out" / "exercise3b_loss_curves.png").is_file()


def test_identifier_missing_from_the_instance_prompt_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        trainer.parse_args(["--instance-prompt", "a zwx african fabric pattern"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --identifier 'sks' is not a word of --instance-prompt" in err[0]
    assert trainer.parse_args(["--instance-prompt", "a zwx fabric", "--identifier", "zwx"]).identifier == "zwx"


def test_identifier_embeddings_train_and_load_through_the_repo_loader(tiny_pipeline_dir, instance_dir, tmp_path):
    from safetensors import safe_open

    from common.adapters import switch_adapters
    from common.identifier_embeddings import IDENTIFIER_FILE
    from common.pipeline import load_pipeline
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 3,
                                        "--train-identifier", "--identifier-learning-rate", 0.1)) == 0
    summary = json.loads((tmp_path / "out" / "exercise3b_summary.json").read_text())
    assert summary["identifier_token_embeddings"] == 3 and summary["text_encoder_lora_layers"] == 0
    with safe_open(str(tmp_path / "lora" / IDENTIFIER_FILE), framework="pt") as handle:
        assert list(handle.keys()) == ["k", "s", "s</w>"] and handle.metadata()["identifier"] == "sks"
        saved = {piece: handle.get_tensor(piece) for piece in handle.keys()}

    def encode(pipe, prompt):
        with torch.no_grad():
            return encode_prompt(pipe, prompt, torch.device("cpu"))

    base = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    base_rows = base.text_encoder.get_input_embeddings().weight
    vocabulary = base.tokenizer.get_vocab()
    # 3 updates at 0.1 move every vector by about 0.3 per coordinate (Adam steps are ~lr)
    assert all((saved[piece] - base_rows[vocabulary[piece]]).abs().mean() > 0.1 for piece in saved)
    base_output = unet_output(base)
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    adapter = load_lora(pipe, tmp_path / "lora")
    assert "sks with 3 trained token embeddings" in adapter.describe()
    assert not torch.allclose(encode(pipe, trainer.INSTANCE_PROMPT), encode(base, trainer.INSTANCE_PROMPT), atol=1e-3)
    assert torch.equal(encode(pipe, "a fabric pattern"), encode(base, "a fabric pattern"))  # no s or k in it
    switch_adapters(pipe, False)  # what the judge's "base" rows use: the base model exactly
    assert torch.equal(encode(pipe, trainer.INSTANCE_PROMPT), encode(base, trainer.INSTANCE_PROMPT))
    assert torch.equal(unet_output(pipe), base_output)
    weightless = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    load_lora(weightless, tmp_path / "lora", weight=0)  # --lora-weight 0 switches everything off
    assert torch.equal(encode(weightless, trainer.INSTANCE_PROMPT), encode(base, trainer.INSTANCE_PROMPT))


@pytest.mark.parametrize("targets", [[], trainer.LORA_TARGETS + ["conv1", "conv2"]],
                         ids=["attention", "attention+convolutions"])
def test_saved_lora_loads_the_same_through_every_loader(tiny_pipeline_dir, instance_dir, tmp_path, targets):
    extra = ["--lora-targets", *targets] if targets else []
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2,
                                        "--progress-every", 1, *extra)) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "training_progress_lora").iterdir()) == \
        ["step_00001.png", "step_00002.png"]
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_pipeline_dir) and config["lora_alpha"] == 32

    from common.pipeline import load_pipeline

    outputs = []
    for how in ("repo loader", "plain diffusers"):
        pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
        if how == "repo loader":
            assert load_lora(pipe, tmp_path / "lora").scale == 8.0
        else:
            pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="fabric")
            layers = injected_lora_layers(pipe, "fabric")
            # a LoRA on a Conv2d (the micro model's ResNets) loads as one as well
            convolutions = [layer for layer in layers if isinstance(layer.base_layer, torch.nn.Conv2d)]
            assert len(layers) == 32 + len(convolutions)
            assert bool(convolutions) == bool(targets)
            assert {float(layer.scaling["fabric"]) for layer in layers} == {8.0}
        outputs.append(unet_output(pipe))
    assert torch.equal(outputs[0], outputs[1])


def test_text_encoder_lora_trains_and_loads_the_same_through_every_loader(tiny_pipeline_dir, instance_dir, tmp_path):
    from safetensors.torch import load_file

    from common.pipeline import load_pipeline
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 3,
                                        "--learning-rate", 1e-2, "--train-text-encoder")) == 0
    summary = json.loads((tmp_path / "out" / "exercise3b_summary.json").read_text())
    text_encoder_file = load_file(str(tmp_path / "lora" / "text_encoder" / "adapter_model.safetensors"))
    layers = sum(1 for key in text_encoder_file if ".lora_A." in key)
    assert layers > 0 and summary["text_encoder_lora_layers"] == layers
    assert summary["lora_layers"] == 32 + layers
    diffusers_keys = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors")).keys()
    assert sum(1 for key in diffusers_keys if key.startswith("text_encoder.") and ".lora_A." in key) == layers

    prompt = trainer.INSTANCE_PROMPT
    base = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        base_embedding = encode_prompt(base, prompt, torch.device("cpu"))
    embeddings, unet_outputs = [], []
    for how in ("repo loader", "plain diffusers"):
        pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
        if how == "repo loader":
            assert load_lora(pipe, tmp_path / "lora").layers == 32 + layers
        else:
            pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="fabric")
        text_layers = [m for m in injected_lora_layers(pipe, "fabric")
                       if any(m is module for module in pipe.text_encoder.modules())]
        assert len(text_layers) == layers and {float(m.scaling["fabric"]) for m in text_layers} == {8.0}
        with torch.no_grad():
            embeddings.append(encode_prompt(pipe, prompt, torch.device("cpu")))
        unet_outputs.append(unet_output(pipe))
    # the text encoder learned something, and both loaders put the same thing in place
    assert not torch.allclose(embeddings[0], base_embedding, atol=1e-4)
    assert torch.equal(embeddings[0], embeddings[1]) and torch.equal(unet_outputs[0], unet_outputs[1])


# --- bad input ---------------------------------------------------------------------------------

def refused(args, capsys, *words):
    capsys.readouterr()
    assert run_main(trainer, args) == 1
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], err


def test_missing_and_empty_instance_folder(tiny_pipeline_dir, tmp_path, capsys):
    refused(train_args(tiny_pipeline_dir, tmp_path / "nope", tmp_path), capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    refused(train_args(tiny_pipeline_dir, tmp_path / "empty", tmp_path), capsys, "no images")


def test_unknown_lora_target_is_named(tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    refused(train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--lora-targets", "to_q", "nosuchlayer"),
            capsys, "nosuchlayer", "matches no module")
    assert not (tmp_path / "classes").exists() and not (tmp_path / "lora").exists()


def test_more_class_prompts_than_class_images_is_refused_in_one_line(capsys):
    from common.class_images import shares

    assert shares(100, 3) == [34, 33, 33] and shares(4, 4) == [1, 1, 1, 1]
    with pytest.raises(SystemExit):
        trainer.parse_args(["--class-prompt", "a", "b", "c", "--num-class-images", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "error:" in err[-1]
    assert "fewer than the 3 class prompts" in err[-1]
    # without prior preservation the class prompts are unused, so nothing is refused
    assert trainer.parse_args(["--class-prompt", "a", "b", "c", "--num-class-images", "2",
                               "--no-prior-preservation"]).class_prompt == ["a", "b", "c"]


def test_corrupt_image_is_named(tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(instance_dir, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    refused(train_args(tiny_pipeline_dir, folder, tmp_path), capsys, "broken.png")


def test_existing_adapter_is_never_overwritten_silently(tiny_pipeline_dir, instance_dir, tmp_path, capsys,
                                                       tiny_lora_dir):
    shutil.copytree(tiny_lora_dir, tmp_path / "lora")
    # an earlier run's text-encoder LoRA must not be left to load beside the new UNet LoRA
    shutil.copytree(tiny_lora_dir, tmp_path / "lora" / "text_encoder")
    (tmp_path / "lora" / "identifier_embeddings.safetensors").write_bytes(b"an earlier run's")  # the same
    original = (tmp_path / "lora" / "adapter_model.safetensors").read_bytes()
    refused(train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 1), capsys, "--overwrite")
    assert (tmp_path / "lora" / "adapter_model.safetensors").read_bytes() == original
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 1,
                                        "--overwrite")) == 0
    backups = list((tmp_path / "lora").glob("backup-*/adapter_model.safetensors"))
    assert len(backups) == 1 and backups[0].read_bytes() == original
    assert not (tmp_path / "lora" / "text_encoder").exists()
    assert (backups[0].parent / "text_encoder" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "lora" / "identifier_embeddings.safetensors").exists()  # tiny base: not trained
    assert (backups[0].parent / "identifier_embeddings.safetensors").read_bytes() == b"an earlier run's"


def test_resume_with_other_settings_is_refused(tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2)) == 0
    refused(train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 4, "--resume", "latest",
                       "--rank", 8), capsys, "rank")


def test_resume_without_checkpoint(tiny_pipeline_dir, instance_dir, tmp_path, capsys):
    refused(train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--resume", "latest"), capsys, "no checkpoint")


def test_nan_loss_stops_and_keeps_checkpoints(tiny_pipeline_dir, instance_dir, tmp_path, capsys, monkeypatch):
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2)) == 0
    saved = (tmp_path / "lora" / "checkpoint-2" / "trainable.safetensors").read_bytes()
    real_step = trainer.training_step

    def exploding(*args, **kwargs):
        total, instance, prior = real_step(*args, **kwargs)
        return total * float("nan"), instance, prior

    monkeypatch.setattr(trainer, "training_step", exploding)
    refused(train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 4, "--resume", "latest"),
            capsys, "nan", "--learning-rate")
    assert (tmp_path / "lora" / "checkpoint-2" / "trainable.safetensors").read_bytes() == saved
    assert not (tmp_path / "lora" / "checkpoint-4").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_draws_progress_grids(tiny_pipeline_dir, instance_dir, tmp_path, precision):
    """The CUDA course's path on the CPU: frozen weights in half precision, trainable ones in fp32,
    progress grids drawn mid-training with the model Accelerate prepared (they crashed in the VAE);
    under fp16 with the gradient scaler, as on CUDA."""
    from safetensors.torch import load_file

    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path, "--max-train-steps", 2,
                                        "--progress-every", 1, "--mixed-precision", precision,
                                        "--train-text-encoder", "--train-identifier")) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "training_progress_lora").iterdir()) == \
        ["step_00001.png", "step_00002.png"]
    summary = json.loads((tmp_path / "out" / "exercise3b_summary.json").read_text())
    half = {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert summary["mixed_precision"] == precision and summary["frozen_weights_dtype"] == half
    # the gradient scaler (fp16 only) and its loss scale, kept in the checkpoint for an exact resume
    scaler = json.loads((tmp_path / "lora" / "checkpoint-2" / "training_state.json").read_text())["grad_scaler"]
    assert (scaler is not None) == (precision == "fp16")
    assert summary["gradient_checkpointing"] is False  # auto, on a CPU
    for name in ["adapter_model.safetensors", "text_encoder/adapter_model.safetensors",
                 "identifier_embeddings.safetensors"]:
        saved = load_file(str(tmp_path / "lora" / name))
        assert {tensor.dtype for tensor in saved.values()} == {torch.float32}, name
    lora_b = [t for k, t in load_file(str(tmp_path / "lora" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert all(torch.isfinite(t).all() for t in lora_b) and any(t.abs().sum() > 0 for t in lora_b)  # B left zero


def test_fp16_resume_goes_on_with_the_lowered_loss_scale(tiny_pipeline_dir, instance_dir, tmp_path, monkeypatch):
    """Under fp16 an update whose gradients overflow is skipped and the loss scale lowered. A resume must go
    on with the lowered scale: starting again from the first one, it would skip an update that the
    uninterrupted run made."""
    from safetensors.torch import load_file

    # A first scale so high that the first update overflows, lowered in one step to 2 ** 16, which fits.
    monkeypatch.setattr(torch.amp, "GradScaler",
                        functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 30, backoff_factor=2.0 ** -14))
    flags = ["--mixed-precision", "fp16", "--no-train-text-encoder", "--no-train-identifier"]
    straight, split = train_straight_and_split(tiny_pipeline_dir, instance_dir, tmp_path, flags)
    saved = json.loads((split / "lora" / "checkpoint-3" / "training_state.json").read_text())["grad_scaler"]
    assert saved["scale"] == 2.0 ** 16  # the first update overflowed and was skipped
    lora_b = [t for k, t in load_file(str(straight / "lora" / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert any(t.abs().sum() > 0 for t in lora_b)  # the later updates were made
    assert_same_adapters(straight, split)


def test_ctrl_c_finishes_the_update_under_way_and_the_resume_is_exact(tiny_pipeline_dir, instance_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """Ctrl-C lands in the middle of an update (here after its random draws and forward pass). The run
    finishes that update, saves a checkpoint of it and stops; resuming from there trains the adapter the
    uninterrupted run trained. A second Ctrl-C stops at once and saves nothing of the unfinished update."""
    import signal

    real_step = trainer.training_step

    def interrupted_at(update, presses):
        calls = []

        def step(*args, **kwargs):
            result = real_step(*args, **kwargs)
            calls.append(1)
            if len(calls) == update:
                for _ in range(presses):
                    signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
            return result
        return step

    # the handler the run found (Python's default, or SIG_IGN where a shell started the tests in the background)
    handler_before = signal.getsignal(signal.SIGINT)
    straight, split, twice = tmp_path / "straight", tmp_path / "split", tmp_path / "twice"
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, straight, "--max-train-steps", 6)) == 0
    monkeypatch.setattr(trainer, "training_step", interrupted_at(3, presses=1))
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 6)) == 130
    assert [p.name for p in (split / "lora").glob("checkpoint-*")] == ["checkpoint-3"]
    monkeypatch.setattr(trainer, "training_step", real_step)
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, split, "--max-train-steps", 6,
                                        "--resume", "latest")) == 0
    assert_same_adapters(straight, split)
    capsys.readouterr()
    monkeypatch.setattr(trainer, "training_step", interrupted_at(2, presses=2))
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, twice, "--max-train-steps", 6)) == 130
    assert not list((twice / "lora").glob("checkpoint-*"))
    assert "stopped in the middle of an update" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler_before  # Ctrl-C works as it did before the run


def test_gradient_checkpointing_flag_trains_the_same_adapter(tiny_pipeline_dir, instance_dir, tmp_path):
    """Recomputing activations changes memory and time, not the arithmetic's result."""
    from safetensors.torch import load_file

    adapters, histories = [], []
    for flag in ("--gradient-checkpointing", "--no-gradient-checkpointing"):
        folder = tmp_path / flag
        assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, folder, "--max-train-steps", 2,
                                            flag)) == 0
        summary = json.loads((folder / "out" / "exercise3b_summary.json").read_text())
        assert summary["gradient_checkpointing"] is (flag == "--gradient-checkpointing")
        adapters.append(load_file(str(folder / "lora" / "adapter_model.safetensors")))
        histories.append(json.loads((folder / "lora" / "checkpoint-2" / "training_state.json").read_text())["history"])
    # A recomputed forward gives the same loss; AdamW then moves each weight by about lr * sign(g). Where
    # |g| is near its eps, a last-bit difference in g (another order of summing the recomputed
    # activations' gradients) may move a weight differently, so nearly every weight, not all, must agree.
    assert histories[0]["total"][0] == pytest.approx(histories[1]["total"][0], rel=1e-6)
    same = sum(((tensor - adapters[1][key]).abs() <= 1e-6).sum().item() for key, tensor in adapters[0].items())
    assert same >= 0.99 * sum(tensor.numel() for tensor in adapters[0].values())


def test_compiled_training_saves_the_same_kind_of_adapter(tiny_pipeline_dir, instance_dir, tmp_path, monkeypatch,
                                                          capsys):
    """--compile trains through torch.compile's wrappers, of whole models or of their repeated blocks; the
    adapter's names, the first loss (same weights, same draws) and the progress grid drawn with the uncompiled
    pipeline are as without it. The test compiles with aot_eager, which traces like inductor without generating
    C++ (inductor takes a minute here; it ignores the mode, so reduce-overhead only runs its bookkeeping)."""
    import common.training
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    monkeypatch.setattr(common.training, "COMPILE_BACKEND", "aot_eager")
    runs, graphs = {}, {}
    # three compiled runs cover both scopes, CUDA graphs' mode and its fallback inside checkpoints
    for name, extra in (("eager", []), ("model", ["--compile", "--compile-mode", "reduce-overhead"]),
                        ("checkpointed blocks", ["--compile", "blocks", "--compile-mode", "reduce-overhead",
                                                 "--gradient-checkpointing"])):
        torch._dynamo.reset()
        counters.clear()
        # the text encoder trains too (micro's default): Accelerate compiles it as well
        assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path / name, "--max-train-steps", 2,
                                            "--progress-every", 2, "--train-text-encoder", *extra)) == 0
        graphs[name] = counters["stats"]["unique_graphs"]
        assert ("compiling without CUDA graphs" in capsys.readouterr().out) == (name == "checkpointed blocks")
        state = json.loads((tmp_path / name / "lora" / "checkpoint-2" / "training_state.json").read_text())
        runs[name] = ({**load_file(str(tmp_path / name / "lora" / "adapter_model.safetensors")),
                       **{"text_encoder." + key: value for key, value in load_file(
                           str(tmp_path / name / "lora" / "text_encoder" / "adapter_model.safetensors")).items()}},
                      state["history"])
        assert (tmp_path / name / "out" / "training_progress_lora" / "step_00002.png").is_file()
        summary = json.loads((tmp_path / name / "out" / "exercise3b_summary.json").read_text())
        assert summary["compile"] == {"eager": "off", "checkpointed blocks": "blocks"}.get(name, name)
        # CUDA graphs fail inside the checkpoints that wrap each compiled block: those compile without them
        assert summary["compile_mode"] == {"eager": None, "model": "reduce-overhead",
                                           "checkpointed blocks": "default"}[name]
    eager, eager_history = runs.pop("eager")
    for compiled, compiled_history in runs.values():
        assert set(compiled) == set(eager) and not any("_orig_mod" in key for key in compiled)
        assert compiled_history["total"][0] == pytest.approx(eager_history["total"][0], rel=1e-4)
    # nothing compiled without --compile; blocks: many small graphs, one per kind of block and shape
    assert graphs["eager"] == 0 and 0 < graphs["model"] < graphs["checkpointed blocks"], graphs


def test_model_card_and_web_ui_file_and_a_users_readme_survives(tiny_pipeline_dir, instance_dir, tmp_path):
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file

    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path / "a", "--max-train-steps", 2,
                                        "--progress-every", 1, "--train-text-encoder")) == 0
    card = ModelCard.load(tmp_path / "a" / "lora" / "README.md")
    assert card.data.base_model == str(tiny_pipeline_dir)
    assert card.data.instance_prompt == trainer.INSTANCE_PROMPT and {"lora", "dreambooth"} <= set(card.data.tags)
    assert "lora_kohya.safetensors" in card.text and "| lora_alpha | 32 |" in card.text
    kohya = load_file(str(tmp_path / "a" / "lora" / "lora_kohya.safetensors"))
    assert any(key.startswith("lora_te1_") for key in kohya) and any(key.startswith("lora_unet_") for key in kohya)

    # a README the user wrote in the adapter folder is theirs: the run writes everything else, not that
    users = tmp_path / "b" / "lora" / "README.md"
    users.parent.mkdir(parents=True)
    users.write_text("# my notes on this adapter\n")
    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path / "b", "--max-train-steps", 2)) == 0
    assert users.read_text() == "# my notes on this adapter\n"
    assert (tmp_path / "b" / "lora" / "lora_kohya.safetensors").is_file()


def test_a_lora_on_layers_outside_the_blocks_is_written_without_a_web_ui_file(tiny_pipeline_dir, instance_dir,
                                                                              tmp_path):
    """conv_in has no place in kohya's layout: the run still writes the adapter, which loads, and says why
    there is no web-UI file instead of failing after the training."""
    from huggingface_hub import ModelCard

    from common.adapters import read_lora

    assert run_main(trainer, train_args(tiny_pipeline_dir, instance_dir, tmp_path / "a", "--max-train-steps", 1,
                                        "--lora-targets", "to_q", "to_v", "conv_in")) == 0
    lora = read_lora(tmp_path / "a" / "lora")
    assert any(key.startswith("conv_in.") for key in lora.state_dict)
    assert not (tmp_path / "a" / "lora" / "lora_kohya.safetensors").exists()
    assert "No file for the web UIs was written" in ModelCard.load(tmp_path / "a" / "lora" / "README.md").text
