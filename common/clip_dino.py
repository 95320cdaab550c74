"""CLIP and DINO: the image and text embeddings the DreamBooth paper measures with.

Ruiz et al. (2022) score subject fidelity with DINO (a self-supervised ViT-S/16)
and with CLIP's image embeddings (CLIP-I), and prompt fidelity with the cosine
between a picture's CLIP image embedding and its prompt's CLIP text embedding
(CLIP-T). These models are loaded through transformers from a local folder or
the Hugging Face cache only: nothing is downloaded while measuring. CLIP is
required (one line says how to fetch it); DINO is optional and skipped with a
note when it is not there.

The models run in fp32 whatever the pipeline's precision: they are small next
to the UNet, and a measure should not change with the card it ran on.
"""

from dataclasses import dataclass

import torch

from common.errors import UserError

CLIP_MODEL = "openai/clip-vit-base-patch32"
DINO_MODEL = "facebook/dino-vits16"


@dataclass
class Encoder:
    """A transformers model with its processor, on one device."""

    model: torch.nn.Module
    processor: object
    device: torch.device
    name: str


def _load_offline(model_class, processor_class, model_id, device):
    """(model, processor) from a folder or the local cache, or None when they are not there."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # DINO checkpoints have no pooler: its "newly initialized" report is noise here
    try:
        model = model_class.from_pretrained(model_id, local_files_only=True)
        processor = processor_class.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError):  # not on this machine, or not a model of that kind
        return None
    finally:
        logging.set_verbosity(verbosity)
    return Encoder(model.to(device, torch.float32).eval(), processor, torch.device(device), model_id)


def load_clip(model_id, device):
    """CLIP for CLIP-I and CLIP-T; a one-line UserError when it is not available offline."""
    from transformers import CLIPModel, CLIPProcessor

    encoder = _load_offline(CLIPModel, CLIPProcessor, model_id, device)
    if encoder is None:
        raise UserError(f"CLIP-I / CLIP-T need {model_id} as a CLIP model on this machine: download it once "
                        f"while online (`hf download {model_id}`), or pass --clip-model with a local folder")
    return encoder


def load_dino(model_id, device):
    """DINO for the paper's subject fidelity, or None (with a note) when it is not available offline."""
    from transformers import AutoImageProcessor, AutoModel

    encoder = _load_offline(AutoModel, AutoImageProcessor, model_id, device)
    if encoder is None:
        print(f"note: {model_id} is not on this machine, so the DINO column is left out "
              f"(`hf download {model_id}` once while online adds it)")
    return encoder


def _features(output):
    # transformers 5 returns a ModelOutput whose pooler_output holds the projected features; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _in_batches(items, batch_size, embed):
    # Batched to bound memory at any count of pictures; rows come back on the CPU in fp32.
    return torch.cat([embed(items[start:start + batch_size]).float().cpu()
                      for start in range(0, len(items), batch_size)])


@torch.no_grad()
def clip_image_embeddings(clip, images, batch_size=32):
    """One CLIP image embedding per PIL image (rows of a [n, d] tensor, not normalized)."""
    def embed(batch):
        inputs = clip.processor(images=batch, return_tensors="pt").to(clip.device)
        return _features(clip.model.get_image_features(**inputs))

    return _in_batches(images, batch_size, embed)


@torch.no_grad()
def clip_text_embeddings(clip, prompts, batch_size=64):
    """One CLIP text embedding per prompt (truncated to CLIP's 77 tokens)."""
    def embed(batch):
        inputs = clip.processor(text=batch, return_tensors="pt", padding=True, truncation=True).to(clip.device)
        return _features(clip.model.get_text_features(**inputs))

    return _in_batches(prompts, batch_size, embed)


@torch.no_grad()
def dino_embeddings(dino, images, batch_size=32):
    """DINO's embedding of each image: the class token of its last layer, as the paper uses it."""
    def embed(batch):
        inputs = dino.processor(images=batch, return_tensors="pt").to(dino.device)
        return dino.model(**inputs).last_hidden_state[:, 0]

    return _in_batches(images, batch_size, embed)
