"""Pretrain the embedded micro model on the fabric world, on a CPU, reproducibly and resumably.

    python -m micro.pretrain                 # all stages; resumes where it stopped
    python -m micro.pretrain --stage vae     # one stage

Stages (each checkpoints to models/micro_pretraining/<stage>/ as it goes):
1. tokenizer  byte-pair merges from the world's captions (seconds)
2. vae        AutoencoderKL 64x64x3 <-> 16x16x4, on fresh images every batch
3. unet       UNet2DConditionModel and CLIPTextModel trained together on VAE
              latents, with 10% empty captions so classifier-free guidance works
4. assemble   a StableDiffusionPipeline folder in models/micro (safetensors)

The world is procedural, so the data never repeats: batch b of stage s is
drawn from a generator seeded by (seed, s, b), which also makes a resume
continue with exactly the batches it would have seen.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from micro import world

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "models" / "micro_pretraining"
OUT = REPO / "models" / "micro"
TEXT_WIDTH = 64

VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                  layers_per_block=1, norm_num_groups=16, sample_size=64,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
UNET_CONFIG = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 96),
                   layers_per_block=1, norm_num_groups=16, cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
# Stable Diffusion 1.5's noise schedule.
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


def batch_of_world(stage, index, size, seed):
    """(images in [-1, 1] as [B, 3, 64, 64], captions) for batch `index` of `stage`."""
    rng = np.random.default_rng([seed, {"vae": 1, "unet": 2}[stage], index])
    specs = [world.random_spec(rng) for _ in range(size)]
    pixels = np.stack([world.render(spec, 64, int(rng.integers(2 ** 31))) for spec in specs])
    captions = [world.caption(spec, rng) for spec in specs]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, captions


def run_stage(name, models, steps, batch, lr, loss_fn, seed, log_every=50):
    """A resumable training loop shared by the VAE and UNet stages."""
    from diffusers.optimization import get_scheduler

    from common.saving import save_json
    from common.training import load_checkpoint, plot_loss_curves, save_checkpoint, smooth

    folder = WORK / name
    parameters = {f"{i}.{n}": p for i, model in enumerate(models) for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(parameters.values(), lr=lr, weight_decay=1e-2)
    schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=min(200, steps // 10),
                             num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    history, start, seconds = [], 0, 0.0
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    checkpoints = [p for p in checkpoints if (p / "training_state.json").is_file()]
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], parameters, optimizer, schedule, generator)
        start, history, seconds = state["update"], state["history"], state["seconds"]
        print(f"{name}: resuming at update {start}")
    started = time.perf_counter()
    for model in models:
        model.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"pretrain {name}")
    for update in bar:
        images, captions = batch_of_world(name, update, batch, seed)
        loss = loss_fn(images, captions, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters.values(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(loss.item())
        bar.set_postfix(loss=f"{smooth(history)[-1]:.4f}")
        done = update + 1
        if done % 250 == 0 or done == steps:
            elapsed = seconds + time.perf_counter() - started
            save_checkpoint(folder / f"checkpoint-{done}", parameters, optimizer, schedule, generator,
                            {"update": done, "history": history, "seconds": elapsed, "settings": {}})
            for old in folder.glob("checkpoint-*"):
                if old.name != f"checkpoint-{done}":
                    for path in old.iterdir():
                        path.unlink()
                    old.rmdir()
            plot_loss_curves({name: history}, REPO / "outputs" / f"micro_pretraining_{name}_loss.png",
                             f"micro model pretraining: {name}")
            save_json({"updates": done, "seconds": round(elapsed, 1), "loss": round(smooth(history)[-1], 5)},
                      folder / "progress.json")
    for model in models:
        model.eval()
    return history


def make_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**VAE_CONFIG)


def train_vae(steps, seed):
    vae = make_vae()

    def loss_fn(images, captions, generator):
        posterior = vae.encode(images).latent_dist
        latent = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latent).sample
        kl = posterior.kl().mean() / latent[0].numel()
        # L1 keeps edges (dots, stripes) sharper than MSE alone
        return F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images) + 1e-4 * kl

    run_stage("vae", [vae], steps, 16, 1e-3, loss_fn, seed)
    return vae


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))


def make_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(**UNET_CONFIG)


def latent_scaling_factor(vae, seed):
    """1 / std of the VAE's latents over fresh images, as SD's 0.18215 was chosen."""
    with torch.no_grad():
        images, _ = batch_of_world("vae", 10 ** 6, 256, seed)
        return float(1.0 / vae.encode(images).latent_dist.mean.std())


def train_unet(vae, tokenizer, steps, seed):
    from diffusers import DDPMScheduler

    text_encoder, unet = make_text_encoder(tokenizer), make_unet()
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    vae.requires_grad_(False)
    scale = latent_scaling_factor(vae, seed)

    def loss_fn(images, captions, generator):
        drop = torch.rand(len(captions), generator=generator) < 0.1
        captions = ["" if dropped else caption for dropped, caption in zip(drop.tolist(), captions)]
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            latents = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)) * scale
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (len(latents),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        return F.mse_loss(prediction, noise)

    run_stage("unet", [unet, text_encoder], steps, 32, 5e-4, loss_fn, seed)
    return text_encoder, unet, scale


def load_stage(models, name):
    from safetensors.torch import load_file

    checkpoints = sorted((WORK / name).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = load_file(str(checkpoints[-1] / "trainable.safetensors"))
    for i, model in enumerate(models):
        model.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")})
    return models


def assemble(vae, text_encoder, tokenizer, unet, scale):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scale)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(**SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(OUT, safe_serialization=True)
    return pipe


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--stage", choices=["all", "tokenizer", "vae", "unet", "assemble"], default="all")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import CLIPTokenizer

    from common.pipeline import quiet_libraries

    quiet_libraries()
    torch.manual_seed(args.seed)
    tokenizer_dir = WORK / "tokenizer"
    if args.stage in ("all", "tokenizer") or not (tokenizer_dir / "tokenizer.json").is_file():
        from micro.tokenizer import build_tokenizer

        build_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    if args.stage in ("all", "vae"):
        train_vae(args.vae_steps, args.seed)
    if args.stage in ("all", "unet"):
        vae = load_stage([make_vae()], "vae")[0]
        train_unet(vae, tokenizer, args.unet_steps, args.seed)
    if args.stage in ("all", "assemble"):
        vae = load_stage([make_vae()], "vae")[0]
        unet, text_encoder = load_stage([make_unet(), make_text_encoder(tokenizer)], "unet")
        assemble(vae, text_encoder, tokenizer, unet, latent_scaling_factor(vae, args.seed))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
