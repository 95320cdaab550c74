"""The identifier's own token embeddings, trained beside the LoRA ("pivotal tuning").

DreamBooth picks a rare word, "sks", so that it starts out meaning little. A
LoRA then has to give it a meaning through layers that every prompt passes
through, and whatever those layers learn reaches prompts without "sks" too.
Training the identifier's token embeddings as well (a few vectors, as textual
inversion does for a new word) gives "sks" a handle that only prompts with it
carry. On micro, where "sks" is three letter pieces that pretraining never
trained, this is what made the difference (docs/micro_model.md, "The lesson, measured").

Why not diffusers' `load_textual_inversion`: it adds new tokens and refuses
tokens already in the vocabulary, while DreamBooth's identifier is made of
existing rare tokens. So the trained vectors are put in by a forward hook on
the embedding layer: the base model's weights are never changed, and switching
the hook off gives the base model back exactly, as `pipe.disable_lora()` does
for the LoRA.

File: identifier_embeddings.safetensors, {token piece: vector}, beside the LoRA.
"""

from pathlib import Path

import torch

from common.errors import UserError
from common.saving import read_safetensors, save_safetensors

IDENTIFIER_FILE = "identifier_embeddings.safetensors"


def identifier_token_ids(tokenizer, identifier):
    """The vocabulary ids the identifier word is split into ("sks" -> s, k, s</w> on micro)."""
    ids = tokenizer(identifier, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"the identifier {identifier!r} makes no tokens; give a word such as sks")
    return list(dict.fromkeys(ids))


class IdentifierEmbeddings(torch.nn.Module):
    """Trainable vectors that replace the embeddings of a few token ids in a text encoder."""

    def __init__(self, text_encoder, token_ids, vectors=None):
        super().__init__()
        embedding = text_encoder.get_input_embeddings()
        self.register_buffer("token_ids", torch.tensor(token_ids, device=embedding.weight.device))
        start = embedding.weight[self.token_ids] if vectors is None else vectors
        # fp32 even under mixed precision, like the LoRA's trainable weights
        self.vectors = torch.nn.Parameter(start.detach().clone().float().to(embedding.weight.device))
        self.scale = 1.0  # 0 gives the base model's embeddings back; --lora-weight sets it too
        self.hook = embedding.register_forward_hook(self.substitute)

    def substitute(self, module, inputs, output):
        if self.scale == 0:
            return output
        # .to(): the pipeline may have moved the text encoder since (this module is not in its tree)
        matches = inputs[0].unsqueeze(-1) == self.token_ids.to(inputs[0].device)  # (batch, sequence, tokens)
        replacement = matches.to(output.dtype) @ self.vectors.to(output.device, output.dtype)
        if self.scale != 1:
            replacement = output + self.scale * (replacement - output)
        return torch.where(matches.any(-1, keepdim=True), replacement, output)

    def remove(self):
        self.hook.remove()


def attach(text_encoder, token_ids, vectors=None):
    """Hook trainable identifier vectors into `text_encoder`, replacing any hooked before."""
    detach(text_encoder)
    identifier = IdentifierEmbeddings(text_encoder, token_ids, vectors)
    # Kept outside the module tree (object.__setattr__), so that the text encoder's
    # state_dict, PEFT and save_pretrained never see it.
    object.__setattr__(text_encoder, "_identifier_embeddings", identifier)
    return identifier


def attached(text_encoder):
    return getattr(text_encoder, "_identifier_embeddings", None)


def detach(text_encoder):
    identifier = attached(text_encoder)
    if identifier is not None:
        identifier.remove()
        object.__delattr__(text_encoder, "_identifier_embeddings")


def set_scale(text_encoder, scale):
    """1: the trained vectors; 0: the base model's; in between: a blend of the two."""
    identifier = attached(text_encoder)
    if identifier is not None:
        identifier.scale = float(scale)


def save_identifier_embeddings(folder, tokenizer, identifier, word):
    """Write identifier_embeddings.safetensors ({token piece: vector}, the word in its metadata) into `folder`."""
    pieces = tokenizer.convert_ids_to_tokens(identifier.token_ids.tolist())
    path = Path(folder) / IDENTIFIER_FILE
    save_safetensors(dict(zip(pieces, identifier.vectors)), path, metadata={"identifier": word})
    return path


def read_identifier_embeddings(path):
    """(identifier word, {token piece: vector}) from a file, checked before any model is loaded;
    a damaged file is a one-line UserError."""
    from safetensors import safe_open

    vectors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        word = (handle.metadata() or {}).get("identifier", "?")
    return word, vectors


def load_identifier_embeddings(pipe, path, read=None):
    """Hook the vectors of an identifier_embeddings.safetensors file into pipe.text_encoder.

    `read`: what read_identifier_embeddings(path) returned, if it was read already.
    Returns the identifier word the file was trained for."""
    word, vectors = read or read_identifier_embeddings(path)
    vocabulary = pipe.tokenizer.get_vocab()
    unknown = [piece for piece in vectors if piece not in vocabulary]
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if unknown or any(vector.shape != (width,) for vector in vectors.values()):
        raise UserError(f"{path} was trained for another base model (its tokens or {width}-wide vectors do "
                        f"not match this one); use the matching --base-model")
    ids = [vocabulary[piece] for piece in vectors]
    attach(pipe.text_encoder, ids, torch.stack(list(vectors.values())))
    return word
