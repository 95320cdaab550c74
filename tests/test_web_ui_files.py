"""The web UIs' files: kohya's single-file LoRA, AUTOMATIC1111's embedding, and bad input.

Each LoRA file is loaded the way a student would outside this repo, with plain
diffusers' `load_lora_weights` (which detects kohya's layout), and compared with this
repo's own loader: the same layers, the same scale, the same outputs; and outputs
that differ from the base's, so that a file that loads as a silent no-op fails.
"""

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.adapters import injected_lora_layers, load_lora, read_lora
from common.errors import UserError
from common.web_ui_files import EMBEDDING_KEY, save_kohya_lora, save_web_ui_embedding
from tests.helpers import REPO, run_main

MICRO_LORA = REPO / "models" / "micro_release" / "fabric_lora"


def write_trained_style_lora(folder, pipe, rank, alpha):
    """A LoRA on the UNet and the text encoder, saved as exercise3b saves one, with random B matrices
    (trained ones are not zero, and zero would hide a wrong scale)."""
    from peft.utils import get_peft_model_state_dict

    from common.lora_saving import save_lora
    from common.lora_training import TEXT_ENCODER_LORA_TARGETS, add_lora

    models = {"unet": (pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"]),
              "text_encoder": (pipe.text_encoder, TEXT_ENCODER_LORA_TARGETS)}
    configs, trainable = add_lora(models, rank=rank, alpha=alpha, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in trainable.items():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    states = {role: get_peft_model_state_dict(model) for role, (model, _) in models.items()}
    save_lora(folder, states, configs, "tiny")
    return folder


def outputs(pipe, prompt, latent_size):
    """(text encoder's output, UNet's prediction on it) for fixed inputs."""
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, latent_size, latent_size, generator=generator)
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        return text, pipe.unet(sample, 500, text).sample


def assert_same_as_repo_loader(make_pipe, lora_dir, kohya_file, prompt, latent_size, text_encoder_lora=True):
    ours, theirs = make_pipe(), make_pipe()
    adapter = load_lora(ours, lora_dir)
    theirs.load_lora_weights(str(kohya_file), adapter_name="web_ui")
    layers = injected_lora_layers(theirs, "web_ui")
    assert len(layers) == adapter.layers
    assert {float(layer.scaling["web_ui"]) for layer in layers} == {adapter.scale}

    text_ours, unet_ours = outputs(ours, prompt, latent_size)
    text_theirs, unet_theirs = outputs(theirs, prompt, latent_size)
    theirs.disable_lora()
    text_off, unet_off = outputs(theirs, prompt, latent_size)
    for mine, kohya, off, adapted in ((text_ours, text_theirs, text_off, text_encoder_lora),
                                      (unet_ours, unet_theirs, unet_off, True)):
        scale = mine.abs().max()
        # the same matrices and the same arithmetic: equal up to float32 rounding
        assert (mine - kohya).abs().max() <= 1e-5 * scale
        # and the LoRA does act where it has layers: far above that rounding
        if adapted:
            assert (mine - off).abs().max() >= 1e-3 * scale
        else:
            torch.testing.assert_close(mine, off)


def test_tiny_lora_in_kohya_layout_loads_in_diffusers_at_its_scale(tmp_path, load_tiny_pipe):
    # alpha 6, rank 4: scale 1.5, which a converter that writes alpha = rank (scale 1) gets wrong
    folder = write_trained_style_lora(tmp_path / "lora", load_tiny_pipe(), rank=4, alpha=6)
    kohya_file = tmp_path / "lora_kohya.safetensors"
    layers = save_kohya_lora(read_lora(folder), kohya_file)
    state = load_file(str(kohya_file))
    assert all(key.startswith(("lora_unet_", "lora_te1_")) for key in state)
    assert {float(value) for key, value in state.items() if key.endswith(".alpha")} == {6.0}
    assert layers["text_encoder"] > 0 and layers["unet"] > 0
    assert_same_as_repo_loader(load_tiny_pipe, folder, kohya_file, "a b c", 16)


def test_micro_adapter_in_kohya_layout_matches_the_repo_loader(tmp_path):
    from common.pipeline import load_pipeline

    kohya_file = tmp_path / "fabric_lora_kohya.safetensors"
    layers = save_kohya_lora(read_lora(MICRO_LORA), kohya_file)
    assert layers == {"unet": 108}  # 80 attention projections, conv1 and conv2 of 14 ResNets; no text encoder
    # a prompt without "sks": the identifier's trained embeddings, which no LoRA layout holds, do not act
    assert_same_as_repo_loader(lambda: load_pipeline(str(REPO / "models" / "micro"), torch.device("cpu"),
                                                     torch.float32),
                               MICRO_LORA, kohya_file, "a dress made of african fabric pattern", 32,
                               text_encoder_lora=False)


def test_web_ui_embedding_loads_in_diffusers_with_the_trained_vector(tmp_path, load_tiny_pipe):
    vector = torch.randn(32, generator=torch.Generator().manual_seed(3))
    path = save_web_ui_embedding("<african-fabric>", vector, tmp_path / "african-fabric.safetensors")
    assert list(load_file(str(path))) == [EMBEDDING_KEY]  # AUTOMATIC1111's layout: one tensor, named by the file
    pipe = load_tiny_pipe()
    pipe.load_textual_inversion(str(path), token="<african-fabric>")
    token_id = pipe.tokenizer.convert_tokens_to_ids("<african-fabric>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)


def run_export(*args):
    """export_adapter.py as its command line runs it (through run_script), in this process: a fresh
    interpreter per call would spend seconds importing torch; returns the exit code and what it printed."""
    import contextlib
    import io
    import types

    import export_adapter

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(export_adapter, args)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_export_refuses_layers_it_cannot_place_and_writes_nothing(tmp_path, tiny_lora_dir):
    import shutil

    folder = tmp_path / "odd_lora"
    shutil.copytree(tiny_lora_dir, folder)
    state = load_file(str(folder / "adapter_model.safetensors"))
    # a layer outside the UNet's blocks: the web UIs would drop it without a word
    state["base_model.model.time_embedding.linear_1.lora_A.weight"] = torch.zeros(4, 32)
    state["base_model.model.time_embedding.linear_1.lora_B.weight"] = torch.zeros(128, 4)
    save_file(state, str(folder / "adapter_model.safetensors"))
    before = sorted(path.name for path in folder.iterdir())
    result = run_export("--lora-dir", folder)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "time_embedding.linear_1" in result.stderr
    assert sorted(path.name for path in folder.iterdir()) == before
    with pytest.raises(UserError, match="cannot be placed"):
        save_kohya_lora(read_lora(folder), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_export_never_replaces_a_file_unless_asked(tmp_path, tiny_lora_dir):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"the user's own file")
    result = run_export("--lora-dir", tiny_lora_dir, "--output", target)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "--overwrite" in result.stderr
    assert target.read_bytes() == b"the user's own file"
    assert run_export("--lora-dir", tiny_lora_dir, "--output", target, "--overwrite").returncode == 0
    assert any(key.startswith("lora_unet_") for key in load_file(str(target)))
