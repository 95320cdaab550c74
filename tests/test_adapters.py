"""Adapter loading: every supported format loads fully, at its trained scale, and bad files fail clearly."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.adapters import injected_lora_layers, load_lora, load_textual_inversion
from common.errors import UserError
from tests.helpers import unet_output


def test_peft_folder_loads_every_layer_at_alpha_over_r(load_tiny_pipe, tiny_lora_dir):
    pipe = load_tiny_pipe()
    before = unet_output(pipe)
    adapter = load_lora(pipe, tiny_lora_dir)
    file_tensors = load_file(str(tiny_lora_dir / "adapter_model.safetensors"))
    assert adapter.layers == len(file_tensors) // 2 == 32
    assert adapter.scale == 8.0
    assert "32 layers, scale 8.0" in adapter.describe()
    loaded = {name: tensor for name, tensor in pipe.unet.state_dict().items() if "lora_" in name}
    for key, tensor in file_tensors.items():
        module = key.removeprefix("base_model.model.").replace(".weight", ".fabric.weight")
        assert torch.equal(loaded[module], tensor), key
    assert not torch.allclose(unet_output(pipe), before)


def test_plain_load_lora_weights_misses_peft_folder(load_tiny_pipe, tiny_lora_dir):
    """The course's original call loads nothing from a PEFT folder: the reason common/adapters.py exists."""
    pipe = load_tiny_pipe()
    pipe.load_lora_weights(str(tiny_lora_dir), adapter_name="naive")
    assert injected_lora_layers(pipe, "naive") == []


def save_as_diffusers(tiny_lora_dir, folder, with_alpha=True):
    from diffusers import StableDiffusionPipeline

    peft_tensors = load_file(str(tiny_lora_dir / "adapter_model.safetensors"))
    unet_layers = {key.removeprefix("base_model.model."): value for key, value in peft_tensors.items()}
    config = json.loads((tiny_lora_dir / "adapter_config.json").read_text())
    metadata = {"r": config["r"], "lora_alpha": config["lora_alpha"], "target_modules": config["target_modules"]}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_layers,
                                              unet_lora_adapter_metadata=metadata if with_alpha else None)
    return folder / "pytorch_lora_weights.safetensors"


def test_all_formats_give_identical_outputs(load_tiny_pipe, tiny_lora_dir, tmp_path):
    diffusers_file = save_as_diffusers(tiny_lora_dir, tmp_path / "diffusers_lora")
    outputs = {}
    for name, source in {"peft folder": tiny_lora_dir, "peft file": tiny_lora_dir / "adapter_model.safetensors",
                         "diffusers folder": diffusers_file.parent, "diffusers file": diffusers_file}.items():
        pipe = load_tiny_pipe()
        adapter = load_lora(pipe, source)
        assert (adapter.layers, adapter.scale) == (32, 8.0), name
        outputs[name] = unet_output(pipe)
    reference = outputs.pop("peft folder")
    for name, output in outputs.items():
        assert torch.equal(output, reference), name


def test_lora_weight_multiplies_the_trained_scale(load_tiny_pipe, tiny_lora_dir):
    pipe = load_tiny_pipe()
    assert load_lora(pipe, tiny_lora_dir, weight=0.5).scale == 4.0


@pytest.mark.parametrize("weight", [None, 0.5])
def test_fused_lora_draws_what_the_unfused_one_draws(load_tiny_pipe, tiny_lora_dir, weight):
    from common.adapters import fuse_lora

    base = unet_output(load_tiny_pipe())
    unfused, fused = load_tiny_pipe(), load_tiny_pipe()
    for pipe in (unfused, fused):
        load_lora(pipe, tiny_lora_dir, weight=weight)
    fuse_lora(fused)
    assert not injected_lora_layers(fused, "fabric")  # no separate LoRA matmuls left to run
    # (W + s B A) x against W x + s B (A x): the same up to fp32 rounding
    torch.testing.assert_close(unet_output(fused), unet_output(unfused), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unet_output(fused), base, atol=1e-3)


def test_fused_micro_lora_keeps_its_text_encoder_part_and_identifier_embeddings():
    """The shipped micro adapter also has the identifier's trained embeddings (and a text-encoder LoRA where
    one trained): fusing keeps what they do to the prompt."""
    from common.adapters import fuse_lora
    from common.base_model import MICRO_FOLDER, REPO
    from common.pipeline import load_pipeline

    def encoded(pipe):
        ids = pipe.tokenizer("a sks african fabric pattern", padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids)[0]

    pipes = [load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32) for _ in range(3)]
    base, unfused, fused = pipes
    for pipe in (unfused, fused):
        adapter = load_lora(pipe, REPO / "models" / "micro_release" / "fabric_lora")
        assert adapter.identifier_tokens == 3
    fuse_lora(fused)
    assert not injected_lora_layers(fused, "fabric")
    torch.testing.assert_close(encoded(fused), encoded(unfused), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(encoded(fused), encoded(base), atol=1e-3)
    torch.testing.assert_close(unet_output(fused), unet_output(unfused), rtol=1e-4, atol=1e-5)


def test_textual_inversion_adds_token_with_its_vector(load_tiny_pipe, tmp_path):
    pipe = load_tiny_pipe()
    vector = torch.randn(pipe.text_encoder.config.hidden_size)
    save_file({"<my-fabric>": vector}, str(tmp_path / "learned_embeds.safetensors"))
    adapter = load_textual_inversion(pipe, tmp_path / "learned_embeds.safetensors")
    assert adapter.token == "<my-fabric>"
    token_id = pipe.tokenizer.convert_tokens_to_ids("<my-fabric>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)


# --- bad input -------------------------------------------------------------------------------

def expect_error(pipe, source, *words, loader=load_lora):
    with pytest.raises(UserError) as raised:
        loader(pipe, source)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_missing_folder_says_train_or_download(load_tiny_pipe, tmp_path):
    expect_error(load_tiny_pipe(), tmp_path / "nope", "exercise3b_train_lora.py", "adapter_config.json",
                 f"into {tmp_path / 'nope'}/")


def test_empty_folder(load_tiny_pipe, tmp_path):
    expect_error(load_tiny_pipe(), tmp_path, "is empty", "exercise3b_train_lora.py")


def test_weights_without_config(load_tiny_pipe, tiny_lora_dir, tmp_path):
    shutil.copy(tiny_lora_dir / "adapter_model.safetensors", tmp_path)
    expect_error(load_tiny_pipe(), tmp_path, "adapter_config.json")


def test_pickle_only_folder_is_refused(load_tiny_pipe, tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    expect_error(load_tiny_pipe(), tmp_path, "safetensors only")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(load_tiny_pipe, tiny_lora_dir, tmp_path, damage):
    shutil.copytree(tiny_lora_dir, tmp_path / "lora")
    weights = tmp_path / "lora" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    expect_error(load_tiny_pipe(), tmp_path / "lora", "damaged or incomplete", "adapter_model.safetensors")


def test_lora_for_another_base_names_both_shapes(load_tiny_pipe, tmp_path):
    from tests.helpers import tiny_unet, write_peft_lora

    other = write_peft_lora(tmp_path / "wide", tiny_unet(cross_attention_dim=48))
    message = expect_error(load_tiny_pipe(), other, "another base model", "48-wide", "32-wide")
    assert "attn2.to_k" in message


def test_lora_for_layers_this_model_lacks(load_tiny_pipe, tiny_lora_dir, tmp_path):
    shutil.copytree(tiny_lora_dir, tmp_path / "lora")
    weights = tmp_path / "lora" / "adapter_model.safetensors"
    tensors = {key.replace("down_blocks.0", "down_blocks.7"): value for key, value in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    expect_error(load_tiny_pipe(), tmp_path / "lora", "another base model", "down_blocks.7")


def test_textual_inversion_for_another_text_encoder(load_tiny_pipe, tmp_path):
    save_file({"<wide>": torch.randn(768)}, str(tmp_path / "learned_embeds.safetensors"))
    expect_error(load_tiny_pipe(), tmp_path / "learned_embeds.safetensors", "768-wide", "32-wide",
                 loader=load_textual_inversion)


def test_missing_textual_inversion_file(load_tiny_pipe, tmp_path):
    expect_error(load_tiny_pipe(), tmp_path / "learned_embeds.safetensors",
                 "exercise3a_train_textual_inversion.py", loader=load_textual_inversion)
