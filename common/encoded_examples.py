"""The training examples as the UNet reads them, encoded once where they never change.

DreamBooth's UNet learns from (latent, caption embedding) pairs. The VAE and,
unless it trains, the text encoder are frozen, so their outputs for the same
ten images and the same captions never change: encoding them on every update
(as the original course did) repeats identical work.
"""

import torch

from common.device import copy_to_device
from common.latent_cache import LatentCache


def encode_prompt(pipe, prompt, device, text_encoder=None):
    """CLIP's last hidden states for a prompt (or a list): what the UNet's cross-attention reads."""
    ids = copy_to_device(pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                        truncation=True, return_tensors="pt").input_ids, device)
    return (pipe.text_encoder if text_encoder is None else text_encoder)(ids)[0]  # a compiled model has no truth value


class EncodedExamples:
    """The training examples as the UNet reads them: image latents and caption embeddings.

    The VAE never changes here, so by default its latents of the training
    images are computed once (common/latent_cache.py); so are the embeddings of
    the prompts, unless the text encoder trains (then they change every update).
    With cache=False both run on every update, as in the original course; the
    numbers are the same, only slower.

    `images_by_role`: {"instance": [PIL images], "class": [...]}.
    `captions_by_role` gives each role one caption for all its images, or a list
    with one caption per image (class images drawn from several class prompts).
    `text_encoder_trains`: anything in the text encoder trains (its LoRA or the
    identifier's embeddings), so embeddings need gradients.
    `empty_prompt_share`: {role: share of its drawn images captioned "" instead}.
    """

    def __init__(self, pipe, *, images_by_role, captions_by_role, flip, cache, text_encoder_trains, device, dtype,
                 empty_prompt_share=None):
        self.pipe, self.device = pipe, device
        self.text_encoder_trains = text_encoder_trains
        self.empty_prompt_share = {role: share for role, share in (empty_prompt_share or {}).items() if share > 0}
        # Under `accelerate launch` training must run the text encoder through Accelerate's
        # wrapper (which averages its gradients), while the pipeline samples with the bare model.
        self.text_encoder = pipe.text_encoder
        self.images = LatentCache(pipe.vae, images_by_role, flip, cache, device, dtype)
        self.prompts, self.prompt_of_image = {}, {}
        for role, images in images_by_role.items():
            captions = captions_by_role[role]
            captions = [captions] * len(images) if isinstance(captions, str) else list(captions)
            if len(captions) != len(images):
                raise ValueError(f"{role}: {len(captions)} captions for {len(images)} images")
            # distinct, in order of first use; the empty prompt, where used, gets an index (and a cached embedding)
            self.prompts[role] = list(dict.fromkeys(captions + ([""] if role in self.empty_prompt_share else [])))
            self.prompt_of_image[role] = torch.tensor([self.prompts[role].index(c) for c in captions])
        self.embeddings = None
        if cache and not text_encoder_trains:
            with torch.no_grad():
                self.embeddings = {role: encode_prompt(pipe, prompts, device) for role, prompts in self.prompts.items()}

    def draw(self, role, batch_size, generator):
        """`batch_size` latents of `role`'s images and the embeddings of their captions."""
        latents, indices = self.images.draw_with_indices(role, batch_size, generator)
        captions = self.prompt_of_image[role][indices]
        if role in self.empty_prompt_share:
            # drawn only when asked for, so that runs without it keep their random stream
            emptied = torch.rand(batch_size, generator=generator) < self.empty_prompt_share[role]
            captions = torch.where(emptied, self.prompts[role].index(""), captions)
        if self.embeddings is not None:
            embeddings = self.embeddings[role]
            return latents, embeddings[copy_to_device(captions, embeddings.device)]
        # Only the captions drawn this update go through the text encoder.
        needed, position = torch.unique(captions, return_inverse=True)
        with torch.set_grad_enabled(self.text_encoder_trains):
            embeddings = encode_prompt(self.pipe, [self.prompts[role][i] for i in needed.tolist()], self.device,
                                       self.text_encoder)
        return latents, embeddings[copy_to_device(position, embeddings.device)]
