"""The identifier's trained token embeddings: they change "sks" prompts only, switch off exactly, and
refuse a file made for another base model."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from common.errors import UserError
from common.identifier_embeddings import (attach, attached, detach, identifier_token_ids,
                                          load_identifier_embeddings, set_scale)

WITH_IDENTIFIER = "a sks african fabric pattern"
WITHOUT = "a fabric pattern"  # no s or k: none of the identifier's pieces on the tiny letter tokenizer


def encoded(pipe, prompt):
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def token_embeddings(pipe, prompt):
    ids = pipe.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids[0], pipe.text_encoder.get_input_embeddings()(ids)[0]


def test_vectors_replace_only_the_identifiers_tokens_and_switch_off_exactly(load_tiny_pipe):
    pipe = load_tiny_pipe()
    base_weight = pipe.text_encoder.get_input_embeddings().weight.clone()
    base_with, base_without = encoded(pipe, WITH_IDENTIFIER), encoded(pipe, WITHOUT)
    _, base_tokens = token_embeddings(pipe, WITH_IDENTIFIER)
    ids = identifier_token_ids(pipe.tokenizer, "sks")
    assert pipe.tokenizer.convert_ids_to_tokens(ids) == ["s", "k", "s</w>"]
    identifier = attach(pipe.text_encoder, ids)
    assert torch.equal(encoded(pipe, WITH_IDENTIFIER), base_with)  # starts at the base's own vectors
    with torch.no_grad():
        identifier.vectors.add_(torch.randn(identifier.vectors.shape, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(encoded(pipe, WITH_IDENTIFIER), base_with, atol=1e-3)
    assert torch.equal(encoded(pipe, WITHOUT), base_without)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, base_weight)  # base weights untouched
    assert "identifier" not in str(list(pipe.text_encoder.state_dict()))

    token_ids, trained_tokens = token_embeddings(pipe, WITH_IDENTIFIER)
    set_scale(pipe.text_encoder, 0.5)
    _, half = token_embeddings(pipe, WITH_IDENTIFIER)
    is_identifier = torch.isin(token_ids, torch.tensor(ids))
    assert is_identifier.sum() == 3
    assert torch.allclose(half[is_identifier], (base_tokens[is_identifier] + trained_tokens[is_identifier]) / 2)
    assert torch.equal(half[~is_identifier], base_tokens[~is_identifier])
    set_scale(pipe.text_encoder, 0.0)
    assert torch.equal(encoded(pipe, WITH_IDENTIFIER), base_with)
    set_scale(pipe.text_encoder, 1.0)
    detach(pipe.text_encoder)
    assert attached(pipe.text_encoder) is None and torch.equal(encoded(pipe, WITH_IDENTIFIER), base_with)


def test_gradients_reach_the_vectors_only_through_identifier_prompts(load_tiny_pipe):
    pipe = load_tiny_pipe()
    pipe.text_encoder.requires_grad_(False)
    identifier = attach(pipe.text_encoder, identifier_token_ids(pipe.tokenizer, "sks"))
    for prompt, reached in ((WITHOUT, False), (WITH_IDENTIFIER, True)):
        identifier.vectors.grad = None
        ids = pipe.tokenizer(prompt, return_tensors="pt").input_ids
        pipe.text_encoder(ids)[0].square().sum().backward()
        grad = identifier.vectors.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == reached, prompt


def test_a_damaged_file_beside_a_lora_is_refused_in_one_line_before_any_model_loads(tiny_lora_dir, tmp_path):
    from common.adapters import read_lora
    from common.identifier_embeddings import IDENTIFIER_FILE

    folder = tmp_path / "lora"
    shutil.copytree(tiny_lora_dir, folder)
    (folder / IDENTIFIER_FILE).write_bytes(b"half a file")
    with pytest.raises(UserError, match="damaged or incomplete") as error:
        read_lora(folder)
    assert IDENTIFIER_FILE in str(error.value) and "\n" not in str(error.value)


def test_a_file_for_another_base_model_is_refused(load_tiny_pipe, tmp_path):
    pipe = load_tiny_pipe()
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    for name, tensors in (("unknown_piece", {"sks</w>zz": torch.zeros(width)}),
                          ("wrong_width", {"s": torch.zeros(width + 1)})):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"identifier": "sks"})
        with pytest.raises(UserError, match="another base model"):
            load_identifier_embeddings(pipe, path)
        assert attached(pipe.text_encoder) is None
