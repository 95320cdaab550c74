"""Pretrain the embedded micro model on the fabric world, reproducibly and resumably.

    python -m micro.pretrain                       # all stages on this machine; resumes where it stopped
    python -m micro.pretrain --stage vae           # one stage
    python -m micro.pretrain --device cuda --workers 8   # the same schedule on a GPU, images drawn in 8 processes

Stages (each checkpoints to <work-dir>/<stage>/ as it goes, with a loss curve in outputs/).
`--stage all` runs these, and builds the shipped model (v2):
1. tokenizer  byte-pair merges from the world's captions (seconds)
2. vae        v1's AutoencoderKL, 64x64x3 <-> 16x16x4, on fresh images every batch
3. unet       v1's UNet2DConditionModel and CLIPTextModel trained together on cached
              VAE latents, with 10% empty captions so classifier-free guidance works;
              v2 starts from its text encoder, which already knows the world's words
4. vae2       v2's VAE, whole and from scratch on the world and generic shapes (never
              the subject): 64x64x3 <-> 32x32x4 (--vae2-levels 2), so that small points
              survive the round trip
5. unet2      v2's UNet, from scratch on vae2's latents of the world and shapes
6. unet2-more unet2 trained further from its final weights, with a fresh schedule and offset
              noise (--unet2-more-steps, --unet2-more-lr, --unet2-more-offset-noise), so that
              each picture's colour comes from its prompt; 0 steps skips it
7. unet2-attention16  unet2-more's model with cross-attention added at its 16x16 level,
              where a rosette is three latent pixels wide (warm-started: it starts drawing
              as before), trained further (--unet2-attention16-steps; 0 skips it)
8. assemble   a StableDiffusionPipeline folder in models/micro (safetensors) and
              a sample grid in outputs/micro_pretraining_samples.png; it takes the newest
              of unet2-attention16, unet2-more and unet2 with vae2's VAE where one ran, else
              the shapes decoder and unet16 where those ran, else v1

Measured experiments, run by name only (docs/micro_model.md says what each gave):
   decoder    v1's decoder alone fine-tuned for sharper edges (the latents stay the same)
   shapes     v1's decoder alone again, on the world and generic small shapes;
              --vae-widen N makes it N times as wide around v1's exact encoder
   unet16     v1's UNet with cross-attention at 16x16 too, warm-started from v1
   vae2 with --vae2-levels 3 (16x16 latents) and --vae2-latent-channels 16
   unet2 with --offset-noise or --schedule-shift

v2's UNet can also start from a v1 model folder's text encoder instead of this run's v1 stages
(v1 is models/micro at commit 162ddd3: `git worktree add ../micro_v1 162ddd3`):

    python -m micro.pretrain --stage vae2 --vae2-dir models/micro_v2_vae
    python -m micro.pretrain --stage unet2 --vae2-dir models/micro_v2_vae --from-model ../micro_v1/models/micro

The world is procedural, so every random draw is seeded by (seed, stage, batch):
a resume continues with exactly the batches it would have seen, and the same
command on a GPU trains on the same images as on a CPU.
"""

import argparse
import collections
import hashlib
import math
import multiprocessing
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common.cli import non_negative_float, positive_float
from micro import world

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "models" / "micro_pretraining"
OUT = REPO / "models" / "micro"
STAGE_SEEDS = {"vae": 1, "latents": 2, "unet": 3, "decoder": 4, "shapes": 5, "shape-latents": 6, "unet16": 7,
               "vae2": 8, "unet2": 9, "unet2-more": 10, "unet2-attention16": 11}
# v2 (the "unet16" stage): cross-attention at 16x16 too, where a rosette is a few latent pixels
# wide rather than one. Only cross-attention there: the prompt reaches the level, while
# self-attention over its 256 positions stays out (the cost measured for v1). Two cross-attention
# layers, as diffusers' only_cross_attention builds them.
UNET16_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                     only_cross_attention=(True, False, False), mid_block_only_cross_attention=False)

VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                  layers_per_block=1, norm_num_groups=16, sample_size=64,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
# Stable Diffusion 1.5's noise schedule.
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


def noise_schedule(shift=1.0):
    """SCHEDULE with every timestep's signal-to-noise ratio divided by `shift`, as `trained_betas`, which
    the model folder's scheduler config keeps (and every scheduler made `from_config` reads); shift 1 is
    SCHEDULE itself.

    Why try it: the same noise hides less of a larger latent. The mean of n latent pixels sees its noise
    shrink by sqrt(n), so at the schedule's noisy end a UNet on 32x32 latents can still read each
    picture's colours from its noisy input, and learns to take them from there rather than from the
    prompt; at sampling the start is pure noise, and every picture comes out in the latents' average
    colour. Dividing the SNR by the ratio of latent pixels gives a picture's coarse content the noise
    it had at 16x16 (resolution-shifted schedules: Hoogeboom et al., 2023, "simple diffusion"; Esser
    et al., 2024, SD 3). On v2 it did not bring the colours back and `--offset-noise` did
    (docs/micro_model.md, "Why v2 lost its colours")."""
    if shift == 1.0:
        return dict(SCHEDULE)
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler(**SCHEDULE).alphas_cumprod.double()
    snr = alphas_cumprod / (1 - alphas_cumprod) / shift
    shifted = snr / (1 + snr)
    betas = 1 - shifted / torch.cat([torch.ones(1, dtype=shifted.dtype), shifted[:-1]])
    return {**SCHEDULE, "trained_betas": [float(beta) for beta in betas]}


# Attention sits at the 8x8 and 4x4 levels (and the middle), not at 16x16: self-attention
# over 256 positions was half the cost of every update (docs/micro_model.md, "Pretraining").
# Fabric patterns are local, so convolutions draw them; the prompt still reaches every level
# through the 8x8 and 4x4 cross-attention. The saved time buys width at 16x16, where the
# fine detail is drawn.
UNET_BLOCKS = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


# For 32x32 latents: a level outside v1's three, convolutions only. UNET32_BLOCKS also gives the
# 16x16 level cross-attention, as unet16 gives v1's (a rosette is three latent pixels wide there).
UNET32_CONV_BLOCKS = dict(down_block_types=("DownBlock2D",) + UNET_BLOCKS["down_block_types"],
                          up_block_types=UNET_BLOCKS["up_block_types"] + ("UpBlock2D",))
UNET32_BLOCKS = dict(down_block_types=("DownBlock2D",) + UNET16_BLOCKS["down_block_types"],
                     up_block_types=UNET16_BLOCKS["up_block_types"] + ("UpBlock2D",),
                     only_cross_attention=(False,) + UNET16_BLOCKS["only_cross_attention"],
                     mid_block_only_cross_attention=False)


def unet_config(channels, text_width, blocks=None, latent_channels=4, latent_size=16):
    return dict(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                block_out_channels=tuple(channels),
                layers_per_block=1, norm_num_groups=16, cross_attention_dim=text_width, attention_head_dim=8,
                **(blocks or UNET_BLOCKS))


# --- the data: fresh procedural images, drawn in worker processes on a many-core machine ---

def world_batch(stage, index, size, seed):
    """(uint8 pixels [B, 64, 64, 3], specs) for batch `index` of `stage`; depends on nothing else."""
    rng = np.random.default_rng([seed, STAGE_SEEDS[stage], index])
    specs = [world.random_spec(rng) for _ in range(size)]
    pixels = np.stack([world.render(spec, 64, int(rng.integers(2 ** 31))) for spec in specs])
    return pixels, specs


def to_tensor(pixels):
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def prefetch(function, indices, workers, depth=32):
    """map(function, indices) in order; with workers > 0, computed ahead in that many processes.

    The queue is bounded so a fast renderer cannot fill the memory ahead of a slow trainer.
    """
    if workers <= 0:
        yield from map(function, indices)
        return
    # spawn: the workers only need numpy, and forking a process that holds torch threads can hang
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = collections.deque()
        for index in indices:
            pending.append(pool.apply_async(function, (index,)))
            if len(pending) >= depth:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --- one resumable loop for both networks ---

def run_stage(folder, models, steps, lr, batches, loss_fn, seed, ema_decay=None, settings=None,
              plot_dir=REPO / "outputs", checkpoint_every=250):
    """Train `models` on `batches(start)` with AdamW and a cosine schedule, checkpointing as it goes.

    With `ema_decay`, an exponential moving average of the weights is kept beside
    them (diffusion models sample markedly better from it) and returned.
    """
    from diffusers.optimization import get_scheduler

    from common.errors import UserError
    from common.saving import save_json
    from common.checkpoints import damage, load_checkpoint, newest_intact, prune_checkpoints, save_checkpoint
    from common.training_run import plot_loss_curves, smooth

    name = folder.name
    parameters = {f"{i}.{n}": p for i, model in enumerate(models) for n, p in model.named_parameters()}
    averaged = {f"ema.{n}": p.detach().clone() for n, p in parameters.items()} if ema_decay else {}
    optimizer = torch.optim.AdamW(parameters.values(), lr=lr, weight_decay=1e-2)
    schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=min(200, steps // 10),
                             num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    settings = {"steps": steps, "lr": lr, "ema_decay": ema_decay, **(settings or {})}
    history, start, seconds = [], 0, 0.0
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    checkpoints = [p for p in checkpoints if (p / "training_state.json").is_file()]
    if checkpoints:
        # a job killed while writing, or a full disk, leaves the newest checkpoint cut short: the one
        # before it (two are kept) resumes the same training a few hundred updates earlier
        intact = newest_intact(folder)
        if intact is None:
            bad_file, problem = damage(checkpoints[-1])
            raise UserError(f"{checkpoints[-1] / bad_file} is damaged ({problem}) and no intact checkpoint is "
                            f"left; delete {folder} to start this stage afresh")
        if intact != checkpoints[-1]:
            bad_file, problem = damage(checkpoints[-1])
            print(f"warning: {checkpoints[-1] / bad_file} is damaged ({problem}); resuming from {intact} instead")
        state = load_checkpoint(intact, {**parameters, **averaged}, optimizer, schedule, generator)
        if state["settings"] != settings:
            raise UserError(f"{intact} was trained with {state['settings']}, not {settings}; "
                            f"delete {folder} to start this stage afresh")
        start, history, seconds = state["update"], state["history"], state["seconds"]
        print(f"{name}: resuming at update {start}")
    started = time.perf_counter()
    for model in models:
        model.train()
    bar = tqdm(zip(range(start, steps), batches(start)), initial=start, total=steps, desc=f"pretrain {name}")
    for update, batch in bar:
        loss = loss_fn(batch, update, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters.values(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if averaged:
            # the usual warm-up: early on the average follows the weights closely
            decay = min(ema_decay, (1 + update) / (10 + update))
            with torch.no_grad():
                torch._foreach_lerp_(list(averaged.values()), list(parameters.values()), 1 - decay)
        history.append(loss.item())
        bar.set_postfix(loss=f"{smooth(history)[-1]:.4f}")
        done = update + 1
        if done % checkpoint_every == 0 or done == steps:
            elapsed = seconds + time.perf_counter() - started
            save_checkpoint(folder / f"checkpoint-{done}", {**parameters, **averaged}, optimizer, schedule,
                            generator, {"update": done, "history": history, "seconds": elapsed,
                                        "settings": settings})
            prune_checkpoints(folder, keep=2)
            plot_loss_curves({name: history}, plot_dir / f"micro_pretraining_{name}_loss.png",
                             f"micro model pretraining: {name}")
            save_json({"updates": done, "seconds": round(elapsed, 1), "loss": round(smooth(history)[-1], 5),
                       "device": str(next(models[0].parameters()).device), "settings": settings},
                      folder / "progress.json")
    for model in models:
        model.eval()
    final = {name.split(".", 1)[1]: tensor for name, tensor in averaged.items()} if averaged else parameters
    save_final(folder, final)
    return final


def save_final(folder, weights):
    """<stage>/final.safetensors: the weights `assemble` uses (the averaged ones where kept)."""
    from common.saving import save_safetensors

    save_safetensors({n: t.detach().float().cpu().contiguous() for n, t in weights.items()},
                     folder / "final.safetensors")


def load_final(models, folder):
    from safetensors.torch import load_file

    from common.errors import UserError

    path = folder / "final.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing: run the {folder.name} stage first (python -m micro.pretrain "
                        f"--stage {folder.name})")
    state = load_file(str(path))
    for i, model in enumerate(models):
        model.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")})
    return models


# --- the networks ---

def vae_config(widen=1, levels=3, latent_channels=4):
    """VAE_CONFIG with every block `widen` times as wide, `levels` levels (3: 16x16 latents, as v1;
    2: 32x32) and `latent_channels` channels in the latents (SD 1.5: 4; SD 3: 16). The groups of its
    GroupNorms widen with it, so a group keeps v1's number of channels (which is what lets
    `widened_vae` place v1 inside it exactly)."""
    channels = tuple(widen * c for c in VAE_CONFIG["block_out_channels"][:levels])
    return {**VAE_CONFIG, "block_out_channels": channels, "norm_num_groups": widen * VAE_CONFIG["norm_num_groups"],
            "down_block_types": VAE_CONFIG["down_block_types"][:levels],
            "up_block_types": VAE_CONFIG["up_block_types"][:levels], "latent_channels": latent_channels}


def make_vae(widen=1, levels=3, latent_channels=4):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**vae_config(widen, levels, latent_channels))


def widened_vae(vae, widen):
    """A VAE `widen` times as wide that computes exactly what `vae` computes, to start v2's wider decoder.

    Every weight of `vae` is copied into the leading channels of the wide one. In the encoder the new
    channels stay zero (a GroupNorm over a group of zeros gives its bias, here 0), so the wide encoder
    gives v1's latents up to float rounding and the UNet trained on them keeps working. In the
    decoder the new channels start at their random initialisation but feed nothing of v1's yet (their
    outgoing weights are zero, as are the new rows of the attention's keys): it starts drawing exactly
    as v1 and training grows the new channels into use (a function-preserving widening, as in Net2Net,
    Chen et al., 2016, here with zeros where Net2Net copies units).
    """
    wide = make_vae(widen)
    old_state, new_state = vae.state_dict(), wide.state_dict()
    with torch.no_grad():
        for name, old in old_state.items():
            new = new_state[name]
            if name.startswith(("encoder.", "quant_conv.")):
                new.zero_()
            elif new.dim() >= 2 and new.shape[1] > old.shape[1]:
                new[:old.shape[0], old.shape[1]:] = 0  # new channels -> v1's channels: zero at the start
            if name.endswith("attentions.0.to_k.weight") or name.endswith("attentions.0.to_k.bias"):
                new[old.shape[0]:] = 0  # the new key dimensions add nothing to v1's attention scores
            new[tuple(slice(0, size) for size in old.shape)] = old
            if name.endswith(("attentions.0.to_q.weight", "attentions.0.to_q.bias")):
                # one head as wide as the channels, so its 1/sqrt(width) scale shrinks: v1's queries
                # are scaled up to keep v1's attention scores
                new *= math.sqrt(new.shape[0] / old.shape[0])
    wide.load_state_dict(new_state)
    wide.register_to_config(scaling_factor=vae.config.scaling_factor)
    return wide


def make_text_encoder(tokenizer, width, layers):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))


def make_unet(channels, text_width, blocks=None, latent_channels=4, latent_size=16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(**unet_config(channels, text_width, blocks, latent_channels, latent_size))


def fresh_images(stage, steps, args):
    """batches(start) for run_stage: world batches start..steps-1 of `stage`, never seen before."""
    return lambda start: prefetch(partial(world_batch, stage, size=args.vae_batch, seed=args.seed),
                                  range(start, steps), args.workers)


def train_vae(args, device):
    vae = make_vae().to(device)
    run_stage(args.work_dir / "vae", [vae], args.vae_steps, 1e-3, fresh_images("vae", args.vae_steps, args),
              whole_vae_loss(vae, device), args.seed, settings={"batch": args.vae_batch}, plot_dir=args.outputs_dir)
    return vae


def edge_loss(reconstruction, images):
    """L1 on the images' gradients: rewards edges, so that small shapes keep their corners."""
    return sum(F.l1_loss(reconstruction.diff(dim=axis), images.diff(dim=axis)) for axis in (-1, -2))


def whole_vae_loss(vae, device, edges=False):
    """The loss of a VAE trained whole: a latent sampled from the posterior decoded again, scored by
    L1 and MSE (L1 keeps edges such as dots and stripes sharper than MSE alone), a small KL term, and
    with `edges` the L1 loss on image gradients."""
    def loss_fn(pixels_and_specs, update, generator):
        images = to_tensor(pixels_and_specs[0]).to(device)
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images) + 1e-4 * kl
        return loss + edge_loss(reconstruction, images) if edges else loss
    return loss_fn


def decoder_loss(vae, device, encoder=None):
    """The decoder-only loss: the frozen encoder's latent (sampled from its posterior) decoded again,
    scored by L1, MSE and an L1 loss on image gradients (edges). `encoder`: a VAE whose encoder computes
    the same as `vae`'s at less cost (v1's, inside a widened VAE)."""
    def loss_fn(pixels_and_specs, update, generator):
        images = to_tensor(pixels_and_specs[0]).to(device)
        with torch.no_grad():
            posterior = (encoder or vae).encode(images).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            latent = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latent).sample
        return F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images) + edge_loss(reconstruction, images)
    return loss_fn


def freeze_encoder(vae):
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    return vae


def train_decoder(args, device):
    """Sharpen the decoder alone, as Stability did for SD's ft-MSE decoder: the encoder, and so the
    latents the UNet learns from, stay exactly as they are; only the pictures made from them improve.

    An L1 loss on image gradients rewards edges, so that a 4x4-pixel diamond is less often decoded
    as a round dot (which changes the pattern family); docs/micro_model.md measures how often
    the judge still recognises the family after this stage.
    """
    vae = freeze_encoder(load_final([make_vae()], args.work_dir / "vae")[0].to(device))
    run_stage(args.work_dir / "decoder", [vae], args.decoder_steps, 5e-4,
              fresh_images("decoder", args.decoder_steps, args), decoder_loss(vae, device), args.seed,
              settings={"batch": args.vae_batch}, plot_dir=args.outputs_dir)
    return vae


def world_and_shapes_batch(stage, index, size, seed, world_every=4):
    """(uint8 pixels, specs): batch `index` of `stage`, one picture in `world_every` from the fabric world
    (so that the decoder keeps drawing it) and the rest generic shapes (micro/shapes.py; never the subject)."""
    from micro.shapes import random_shape_picture

    rng = np.random.default_rng([seed, STAGE_SEEDS[stage], index])
    pictures, specs = [], []
    for row in range(size):
        if row % world_every:
            picture, spec = random_shape_picture(rng)
        else:
            spec = world.random_spec(rng)
            picture = world.render(spec, 64, int(rng.integers(2 ** 31)))
        pictures.append(picture)
        specs.append(spec)
    return np.stack(pictures), specs


def previous_vae(args):
    """v1's VAE, which the v2 stages build on: --from-model's, else this run's decoder stage's (or its vae
    stage's). The shapes stage fine-tunes its decoder; unet16 encodes with its encoder, which no stage
    after the vae stage changes."""
    if args.from_model:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(args.from_model / "vae")
    decoder_done = (args.work_dir / "decoder" / "final.safetensors").is_file()
    return load_final([make_vae()], args.work_dir / ("decoder" if decoder_done else "vae"))[0]


def train_shape_decoder(args, device):
    """The decoder alone again, on the fabric world and generic small shapes (micro/shapes.py): the
    world's families have no small points, so a decoder trained on them rounds every point off. The
    encoder stays frozen, so the UNet's latents do not change, and the subject is never among the
    shapes. (Training the encoder too did not keep the points either: docs/micro_model.md.)"""
    v1 = previous_vae(args).to(device)
    if args.vae_widen > 1:  # v1 stays as it is, the encoder the wide one must match
        vae = freeze_encoder(widened_vae(v1.requires_grad_(False), args.vae_widen).to(device))
    else:  # v1's own decoder is the one trained
        vae = freeze_encoder(v1)
    batches = lambda start: prefetch(partial(world_and_shapes_batch, "shapes", size=args.vae_batch, seed=args.seed),
                                     range(start, args.shape_decoder_steps), args.workers)
    settings = {"batch": args.vae_batch, "from": str(args.from_model)}
    if args.vae_widen > 1:
        settings["widen"] = args.vae_widen
    run_stage(args.work_dir / "shapes", [vae], args.shape_decoder_steps, args.shape_decoder_lr, batches,
              decoder_loss(vae, device, encoder=v1), args.seed, settings=settings, plot_dir=args.outputs_dir)
    return vae


def train_vae2(args, device):
    """v2's VAE, whole and from scratch, on the fabric world and generic shapes (half each; never the
    subject): unlike the decoder-only stages, its encoder learns to keep small points in the latents too.
    `--vae2-levels 2` makes its latents 32x32 (one downsampling fewer than v1's 16x16)."""
    vae = make_vae(levels=args.vae2_levels, latent_channels=args.vae2_latent_channels).to(device)
    batches = lambda start: prefetch(partial(world_and_shapes_batch, "vae2", size=args.vae_batch, seed=args.seed,
                                             world_every=2), range(start, args.vae2_steps), args.workers)
    run_stage(args.work_dir / "vae2", [vae], args.vae2_steps, 1e-3, batches, whole_vae_loss(vae, device, edges=True),
              args.seed,
              settings={"batch": args.vae_batch, "levels": args.vae2_levels, "latent_channels": args.vae2_latent_channels},
              plot_dir=args.outputs_dir)
    vae = centred_vae(vae, args.seed, device)
    if args.vae2_dir:
        # a diffusers folder, with the scaling factor the UNet's latents are scaled by
        from common.errors import UserError

        if (args.vae2_dir / "config.json").is_file() and not args.overwrite:
            raise UserError(f"{args.vae2_dir} already holds a VAE; pass --overwrite to replace it")
        vae.register_to_config(scaling_factor=latent_scaling_factor(vae, args.seed, device))
        vae.save_pretrained(args.vae2_dir, safe_serialization=True)
        print(f"wrote {args.vae2_dir}")
    return vae


def stage_vae(folder):
    """The VAE a stage saved in `folder` (vae, decoder, shapes, vae2), as wide (`--vae-widen`) and with as
    many levels (`--vae2-levels`) as that stage made it."""
    from safetensors import safe_open

    from common.errors import UserError

    path = Path(folder) / "final.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing: give a VAE folder, or a micro.pretrain stage folder that finished")
    with safe_open(str(path), "pt") as weights:
        width = weights.get_slice("0.encoder.conv_in.weight").get_shape()[0]
        levels = 1 + max(int(key.split(".")[3]) for key in weights.keys() if key.startswith("0.encoder.down_blocks."))
        latent_channels = weights.get_slice("0.post_quant_conv.weight").get_shape()[0]
    return load_final([make_vae(width // VAE_CONFIG["block_out_channels"][0], levels, latent_channels)],
                      Path(folder))[0]


# Fresh world pictures that centred_vae and latent_scaling_factor measure the latents on: enough for a
# mean and a std per channel to settle (the tests measure on fewer, to save time).
LATENT_STATISTICS_IMAGES = 256


def centred_vae(vae, seed, device):
    """`vae` with its latents' mean over fresh world images (per channel) folded into its biases: the
    encoder's quant_conv subtracts it and the decoder's post_quant_conv adds it back, so every round trip
    is unchanged while the latents are centred on zero.

    Why: sampling starts from zero-mean noise, and at the schedule's noisy end a latent still holds
    sqrt(alphas_cumprod) of its clean value, so a UNet reads a zero-mean start as "a picture whose latent
    mean is zero". Where the world's mean is far from zero (vae2's is, v1's much less), that drew every
    picture with a colour cast (docs/micro_model.md). Stable Diffusion's pipeline has no shift of its
    own (SD 3's shift_factor is not read by StableDiffusionPipeline), so the shift lives in the weights."""
    with torch.no_grad():
        pixels, _ = world_batch("vae", 10 ** 6, LATENT_STATISTICS_IMAGES, seed)
        mean = vae.encode(to_tensor(pixels).to(device)).latent_dist.mean.mean((0, 2, 3))
        channels = mean.numel()
        vae.quant_conv.bias[:channels] -= mean  # the first half of its output is the posterior's mean
        vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ mean
    return vae


def latent_scaling_factor(vae, seed, device):
    """1 / std of the VAE's latents over fresh images, as SD's 0.18215 was chosen."""
    with torch.no_grad():
        pixels, _ = world_batch("vae", 10 ** 6, LATENT_STATISTICS_IMAGES, seed)
        return float(1.0 / vae.encode(to_tensor(pixels).to(device)).latent_dist.mean.std())


def cached_latents(vae, args, device, chunk=256, name="latents", count=None, batch=world_batch, source=None):
    """Latents (posterior means) and specs of `count` (default `--latent-images`) pictures of
    `batch(name, index, size, seed)`, encoded once and cached in <work-dir>/<name>. With `source`
    (a fingerprint of the VAE), a cache another VAE made is encoded anew.

    Encoding costs as much as a third of a UNet update on a CPU, and with a few
    epochs over 10^5 images the UNet never sees a latent often enough to memorise
    it. Captions are drawn afresh for every batch, so the wording still varies.
    """
    from safetensors.torch import load_file

    from common.saving import save_json, save_safetensors

    count = count or args.latent_images
    folder = args.work_dir / name
    latent_file, spec_file, source_file = folder / "latents.safetensors", folder / "specs.json", folder / "source.txt"
    same_source = source is None or (source_file.is_file() and source_file.read_text() == source)
    if latent_file.is_file() and spec_file.is_file() and same_source:
        import json

        specs = json.loads(spec_file.read_text())
        if len(specs) == count:
            return load_file(str(latent_file))["latents"], specs
    latents, specs = [], []
    chunks = range((count + chunk - 1) // chunk)
    with torch.no_grad():
        for pixels, chunk_specs in tqdm(prefetch(partial(batch, name, size=chunk, seed=args.seed),
                                                 chunks, args.workers), total=len(chunks),
                                        desc=f"encode {name}"):
            latents.append(vae.encode(to_tensor(pixels).to(device)).latent_dist.mean.cpu())
            specs.extend(chunk_specs)
    latents = torch.cat(latents)[:count].contiguous()
    specs = specs[:count]
    save_safetensors({"latents": latents}, latent_file)
    save_json(specs, spec_file)
    if source is not None:
        source_file.write_text(source)
    return latents, specs


def diffusion_loss(unet, text_encoder, tokenizer, noise_scheduler, latents, device, offset_noise=0.0):
    """The UNet's loss on a batch of (cached latent rows, captions): epsilon prediction, Min-SNR-5 weighted,
    with `offset_noise` times a per-picture, per-channel constant added to the noise (Guttenberg, 2023).

    Why the offset: the mean of a latent's n pixels sees its noise shrink by sqrt(n), so on 32x32 latents
    the UNet can read each picture's overall colour from its noisy input even at the schedule's noisiest
    step, and learns to take it from there rather than from the prompt; sampling starts from noise whose
    mean is near zero, and every picture comes out with the latents' average colour. A random offset
    hides that mean, so the prompt has to supply it."""
    from diffusers.training_utils import compute_snr

    from common.forward_diffusion import add_offset_noise

    def loss_fn(rows_and_captions, update, generator):
        rows, captions = rows_and_captions
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        clean = latents[rows].to(device)
        noise = torch.randn(clean.shape, generator=generator)
        if offset_noise:
            noise = add_offset_noise(noise, offset_noise, generator)
        noise = noise.to(device)
        timesteps = torch.randint(0, 1000, (len(clean),), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        # Min-SNR-5 weighting (Hang et al., 2023): the nearly clean timesteps, easy and
        # many, stop dominating the gradient; the model learns composition sooner.
        snr = compute_snr(noise_scheduler, timesteps)
        weights = snr.clamp(max=5.0) / snr
        return (F.mse_loss(prediction, noise, reduction="none").mean((1, 2, 3)) * weights).mean()
    return loss_fn


def train_unet(vae, tokenizer, args, device):
    from diffusers import DDPMScheduler

    text_encoder = make_text_encoder(tokenizer, args.text_width, args.text_layers).to(device)
    unet = make_unet(args.unet_channels, args.text_width).to(device)
    vae.requires_grad_(False)
    scale = latent_scaling_factor(vae, args.seed, device)
    latents, specs = cached_latents(vae, args, device)

    def batch_at(update):
        rng = np.random.default_rng([args.seed, STAGE_SEEDS["unet"], update])
        rows = rng.integers(len(specs), size=args.unet_batch)
        # 10% empty captions teach the unconditional prediction that classifier-free guidance needs
        captions = ["" if rng.random() < 0.1 else world.caption(specs[row], rng) for row in rows]
        return torch.from_numpy(rows), captions

    run_stage(args.work_dir / "unet", [unet, text_encoder], args.unet_steps, args.unet_lr,
              lambda start: map(batch_at, range(start, args.unet_steps)),
              diffusion_loss(unet, text_encoder, tokenizer, DDPMScheduler(**SCHEDULE), latents * scale, device),
              args.seed, ema_decay=0.999,
              settings={"batch": args.unet_batch, "channels": list(args.unet_channels),
                        "blocks": list(UNET_BLOCKS["down_block_types"]),
                        "text_width": args.text_width, "text_layers": args.text_layers,
                        "latent_images": args.latent_images}, plot_dir=args.outputs_dir)
    return scale


def shape_caption(spec, rng):
    """A caption for a generic shape picture in the world's own words: its colours at most, since the
    world's vocabulary (the tokenizer's) has no words for stars or rings."""
    ground, shape = spec["colours"][:2]
    phrase = f"{ground} and {shape} fabric pattern" if rng.random() < 0.7 else "fabric pattern"
    return world.caption(spec, rng, phrase=phrase)


def with_new_attention(old_unet, unet):
    """`unet` (a layout with more attention blocks than `old_unet`'s) holding `old_unet`'s weights: every
    layer the two share is copied, and each new attention block's output projection starts at zero, so
    that the new model starts drawing exactly as the old one and training only adds what the prompt,
    now reaching one more level, brings."""
    missing, unexpected = unet.load_state_dict(old_unet.state_dict(), strict=False)
    new_blocks = sorted({key.split(".attentions.")[0] + ".attentions." for key in missing})
    if unexpected or not missing or any(".attentions." not in key for key in missing):
        raise RuntimeError(f"the two UNets differ beyond new attention blocks: {unexpected or missing}")
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.startswith(tuple(new_blocks)) and name.endswith("proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    return unet


def warm_started_unet16(args, tokenizer, device):
    """The v2 UNet (UNET16_BLOCKS) and text encoder, from the v1 weights (`with_new_attention`)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if args.from_model:
        old_unet = UNet2DConditionModel.from_pretrained(args.from_model / "unet")
        text_encoder = CLIPTextModel.from_pretrained(args.from_model / "text_encoder")
    else:
        old_unet, text_encoder = load_final([make_unet(args.unet_channels, args.text_width),
                                             make_text_encoder(tokenizer, args.text_width, args.text_layers)],
                                            args.work_dir / "unet")
    unet = with_new_attention(old_unet, make_unet(args.unet_channels, args.text_width, UNET16_BLOCKS))
    return unet.to(device), text_encoder.to(device)


def train_unet16(tokenizer, args, device):
    """v2's UNet stage: the warm-started UNet and text encoder trained on the world's cached latents,
    with generic shapes (micro/shapes.py, captioned by their colours) in `--shape-share` of each batch."""
    vae = previous_vae(args).to(device).requires_grad_(False)  # its encoder: v1's, which no later stage changes
    unet, text_encoder = warm_started_unet16(args, tokenizer, device)
    train_on_world_and_shapes("unet16", unet, text_encoder, vae, tokenizer, args, device, args.unet16_steps,
                              args.unet16_lr, args.unet16_latent_images, ("latents16", "shape-latents"),
                              {"v2": True, "from": str(args.from_model)}, offset_noise=args.offset_noise)


def v2_vae(args):
    """(vae2's VAE, the file holding its weights): --vae2-dir's diffusers folder, else <work-dir>/vae2's."""
    if args.vae2_dir:
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(args.vae2_dir), args.vae2_dir / "diffusion_pytorch_model.safetensors"
    return (centred_vae(stage_vae(args.work_dir / "vae2"), args.seed, torch.device("cpu")),
            args.work_dir / "vae2" / "final.safetensors")


def v2_unet(args, vae, cross_attention_16=None):
    """A fresh UNet for `vae`'s latents (their channels and size): unet16's layout for 16x16 latents; for
    32x32 a level outside v1's, with cross-attention at 16x16 only with `cross_attention_16` (by default
    --unet2-cross-attention-16)."""
    if cross_attention_16 is None:
        cross_attention_16 = args.unet2_cross_attention_16
    latent_size = VAE_CONFIG["sample_size"] // 2 ** (len(vae.config.block_out_channels) - 1)
    if latent_size == 16:
        return make_unet(args.unet_channels, args.text_width, UNET16_BLOCKS, vae.config.latent_channels)
    # convolutions only at 32x32 and 16x16 unless asked: the cheaper layout (bench/bench_latent_size.py),
    # since the exercise scripts on micro must keep within their CPU budgets (docs/performance.md)
    return make_unet([args.unet_channels[0] // 2] + list(args.unet_channels), args.text_width,
                     UNET32_BLOCKS if cross_attention_16 else UNET32_CONV_BLOCKS,
                     vae.config.latent_channels, latent_size)


def starting_text_encoder(args, tokenizer):
    """The text encoder v2's UNet stages start from: --from-model's where given, else this run's unet
    stage's where it finished (either already knows the world's words), else a fresh one."""
    from transformers import CLIPTextModel

    if args.from_model:
        return CLIPTextModel.from_pretrained(args.from_model / "text_encoder")
    text_encoder = make_text_encoder(tokenizer, args.text_width, args.text_layers)
    if (args.work_dir / "unet" / "final.safetensors").is_file():
        text_encoder = load_final([make_unet(args.unet_channels, args.text_width), text_encoder],
                                  args.work_dir / "unet")[1]
    return text_encoder


def train_unet2(tokenizer, args, device):
    """v2's UNet from scratch (`v2_unet`) on the latents of vae2's VAE, with the text encoder
    warm-started from --from-model's where given."""
    train_on_vae2_latents("unet2", tokenizer, args, device, args.unet2_steps, args.unet_lr, str(args.from_model),
                          offset_noise=args.offset_noise)


def train_unet2_more(tokenizer, args, device):
    """More updates for unet2, warm-started from its final (averaged) weights, on the same latents, with
    a fresh cosine schedule at `--unet2-more-lr` and offset noise of `--unet2-more-offset-noise`: unet2's
    own run cannot be extended, since its schedule has already decayed to zero and its checkpoints hold
    their settings."""
    train_on_vae2_latents("unet2-more", tokenizer, args, device, args.unet2_more_steps, args.unet2_more_lr,
                          "unet2", start_from=args.work_dir / "unet2", offset_noise=args.unet2_more_offset_noise)


def train_unet2_attention16(tokenizer, args, device):
    """unet2-more's model (--from-model's where given, else this run's) with cross-attention added at its
    16x16 level (`with_new_attention`: it starts drawing as before), trained further at unet2-more's
    learning rate and offset noise. The lever this measures: the prompt reaching the level where a
    rosette is three latent pixels wide, without pretraining from scratch."""
    from diffusers import UNet2DConditionModel

    from common.errors import UserError

    def warm_start(vae):
        if args.from_model:
            old_unet = UNet2DConditionModel.from_pretrained(args.from_model / "unet")
            text_encoder = starting_text_encoder(args, tokenizer)
        else:
            old_unet, text_encoder = load_final([v2_unet(args, vae), starting_text_encoder(args, tokenizer)],
                                                args.work_dir / "unet2-more")
        if "CrossAttnDownBlock2D" in old_unet.config.down_block_types[:2]:
            raise UserError("that UNet already has cross-attention at 16x16; unet2-attention16 grows it on "
                            "a UNet without it (unet2 without --unet2-cross-attention-16)")
        return with_new_attention(old_unet, v2_unet(args, vae, True)), text_encoder

    train_on_vae2_latents("unet2-attention16", tokenizer, args, device, args.unet2_attention16_steps,
                          args.unet2_more_lr, str(args.from_model or "unet2-more"), warm_start=warm_start,
                          offset_noise=args.unet2_more_offset_noise, cross_attention_16=True)


def train_on_vae2_latents(stage, tokenizer, args, device, steps, lr, origin, start_from=None, offset_noise=0.0,
                          warm_start=None, cross_attention_16=None):
    """v2's UNet and text encoder (as `v2_unet` and `starting_text_encoder` make them, the final weights in
    `start_from`, or what `warm_start(vae)` returns) trained on the world and shapes as vae2's VAE encodes
    them."""
    vae, weights = v2_vae(args)
    vae = vae.to(device).requires_grad_(False)
    if warm_start:
        unet, text_encoder = warm_start(vae)
    else:
        unet, text_encoder = v2_unet(args, vae), starting_text_encoder(args, tokenizer)
    if start_from:
        unet, text_encoder = load_final([unet, text_encoder], start_from)
    if cross_attention_16 is None:
        cross_attention_16 = args.unet2_cross_attention_16
    train_on_world_and_shapes(stage, unet.to(device), text_encoder.to(device), vae, tokenizer, args, device,
                              steps, lr, args.unet16_latent_images, ("latents-vae2", "shape-latents-vae2"),
                              {"latent_channels": vae.config.latent_channels, "latent_size": unet.config.sample_size,
                               "cross_attention_16": cross_attention_16, "from": origin,
                               "schedule_shift": args.schedule_shift},
                              vae_source=hashlib.sha256(weights.read_bytes()).hexdigest() + " centred",
                              schedule=noise_schedule(args.schedule_shift), offset_noise=offset_noise)


def train_on_world_and_shapes(stage, unet, text_encoder, vae, tokenizer, args, device, steps, lr, world_images,
                              cache_names, settings, vae_source=None, schedule=SCHEDULE, offset_noise=0.0):
    """Train `unet` and `text_encoder` on `vae`'s cached latents of `world_images` world pictures and
    `--shape-images` shape pictures, `--shape-share` of each batch from the shapes, with `offset_noise`."""
    from diffusers import DDPMScheduler

    scale = latent_scaling_factor(vae, args.seed, device)
    world_latents, world_specs = cached_latents(vae, args, device, name=cache_names[0], count=world_images,
                                                batch=world_latents_batch, source=vae_source)
    shape_latents, shape_specs = cached_latents(vae, args, device, name=cache_names[1], count=args.shape_images,
                                                batch=shape_latents_batch, source=vae_source)
    latents = torch.cat([world_latents, shape_latents]) * scale
    specs = world_specs + shape_specs

    def batch_at(update):
        rng = np.random.default_rng([args.seed, STAGE_SEEDS[stage], update])
        from_shapes = rng.random(args.unet_batch) < args.shape_share
        rows = np.where(from_shapes, len(world_specs) + rng.integers(len(shape_specs), size=args.unet_batch),
                        rng.integers(len(world_specs), size=args.unet_batch))
        captions = ["" if rng.random() < 0.1 else shape_caption(specs[row], rng) if row >= len(world_specs)
                    else world.caption(specs[row], rng) for row in rows]
        return torch.from_numpy(rows), captions

    run_stage(args.work_dir / stage, [unet, text_encoder], steps, lr, lambda start: map(batch_at, range(start, steps)),
              diffusion_loss(unet, text_encoder, tokenizer, DDPMScheduler(**schedule), latents, device,
                             offset_noise),
              args.seed, ema_decay=0.999,
              settings={"batch": args.unet_batch, "channels": list(args.unet_channels), "latent_images": world_images,
                        "shape_images": args.shape_images, "shape_share": args.shape_share,
                        "offset_noise": offset_noise, **settings},
              plot_dir=args.outputs_dir)


def world_latents_batch(_name, index, size, seed):
    """The v1 UNet stage's world pictures (stage "latents"), for a cache of another name."""
    return world_batch("latents", index, size, seed)


def shape_latents_batch(_name, index, size, seed):
    """The unet16 stage's shape pictures (stage "shape-latents"), for a cache of another name."""
    return shape_batch("shape-latents", index, size, seed)


def shape_batch(stage, index, size, seed):
    """(uint8 pixels, specs): batch `index` of generic shape pictures (micro/shapes.py)."""
    from micro.shapes import random_shape_picture

    rng = np.random.default_rng([seed, STAGE_SEEDS[stage], index])
    # fewer eight-pointed stars than the decoder's shapes: the UNet learns shapes in general
    pictures, specs = zip(*(random_shape_picture(rng, star_share=0.7, eight_share=0.5) for _ in range(size)))
    return np.stack(pictures), list(specs)


def assemble(args, tokenizer, device):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from common.generation import generate
    from common.grids import labelled_grid
    from common.saving import save_figure

    # unet2 with vae2's VAE where it ran; else the newest decoder that ran (every v1 and shapes stage
    # keeps the vae stage's encoder), and unet16 where it ran
    done = lambda stage: (args.work_dir / stage / "final.safetensors").is_file()
    v2 = done("unet2") or done("unet2-more") or done("unet2-attention16")
    if v2:
        vae = v2_vae(args)[0]
    elif done("shapes"):
        vae = stage_vae(args.work_dir / "shapes")
    else:
        vae = previous_vae(args)
    vae = vae.to(device)
    schedule = noise_schedule(args.schedule_shift) if v2 else SCHEDULE
    if done("unet2-attention16"):
        unet, text_encoder = load_final([v2_unet(args, vae, True), starting_text_encoder(args, tokenizer)],
                                        args.work_dir / "unet2-attention16")
    elif v2:  # unet2-more continues unet2 where it ran
        unet, text_encoder = load_final([v2_unet(args, vae), starting_text_encoder(args, tokenizer)],
                                        args.work_dir / ("unet2-more" if done("unet2-more") else "unet2"))
    elif done("unet16"):
        unet, text_encoder = load_final([make_unet(args.unet_channels, args.text_width, UNET16_BLOCKS),
                                         starting_text_encoder(args, tokenizer)], args.work_dir / "unet16")
    else:
        unet, text_encoder = load_final([make_unet(args.unet_channels, args.text_width),
                                         make_text_encoder(tokenizer, args.text_width, args.text_layers)],
                                        args.work_dir / "unet")
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, args.seed, device))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(**schedule), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False).to(device)
    pipe.save_pretrained(args.out_dir, safe_serialization=True)
    print(f"wrote {args.out_dir}")
    prompts = ["a red and yellow zigzag fabric pattern", "a dress made of blue and white striped fabric pattern",
               "a ceramic vase decorated with black and orange polka dot fabric pattern",
               "a handbag made of green and pink checkered fabric pattern, product photography",
               "a cushion made of purple and yellow kente fabric pattern",
               "a watercolor painting of a woven basket with brown and white mudcloth fabric pattern",
               "orange and blue wax print medallion fabric pattern as wallpaper in a modern living room",
               "an oil painting of a swatch of red and black diamond fabric pattern"]
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, prompts, [0] * len(prompts), steps=30, resolution=64, guidance=7.5,
                      batch_size=len(prompts), desc="samples")
    figure = labelled_grid(images, [textwrap.fill(prompt, 30) for prompt in prompts], cols=4,
                           suptitle="micro model after pretraining (seed 0, 30 steps, guidance 7.5)")
    save_figure(figure, args.outputs_dir / "micro_pretraining_samples.png")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--stage", choices=["all", "tokenizer", "vae", "decoder", "unet", "vae2", "unet2",
                                            "unet2-more", "unet2-attention16", "shapes", "unet16", "assemble"],
                        default="all")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--decoder-steps", type=int, default=2000, help="decoder-only fine-tuning; 0 skips it")
    parser.add_argument("--shape-decoder-steps", type=int, default=1500,
                        help="v2: the decoder alone on the world and generic shapes; 0 skips it")
    parser.add_argument("--shape-decoder-lr", type=float, default=5e-4)
    parser.add_argument("--vae2-steps", type=int, default=1500, help="v2: the whole VAE on the world and shapes")
    parser.add_argument("--vae2-levels", type=int, default=2, choices=[2, 3],
                        help="v2's VAE levels: 3 gives 16x16 latents (as v1), 2 gives 32x32")
    parser.add_argument("--unet2-more-steps", type=int, default=1500,
                        help="unet2-more: further updates from unet2's final weights; 0 skips it")
    parser.add_argument("--unet2-more-lr", type=float, default=3e-4)
    parser.add_argument("--unet2-more-offset-noise", type=non_negative_float, default=0.1,
                        help="unet2-more: this times a per-picture, per-channel constant added to the noise, so "
                             "that a picture's colour comes from its prompt, not its noise")
    parser.add_argument("--unet2-attention16-steps", type=int, default=1500,
                        help="unet2-attention16: updates of unet2-more's model with cross-attention added at 16x16 "
                             "(at --unet2-more-lr and --unet2-more-offset-noise)")
    parser.add_argument("--unet2-cross-attention-16", action="store_true",
                        help="unet2 on 32x32 latents: cross-attention at its 16x16 level too, as unet16 has")
    parser.add_argument("--offset-noise", type=non_negative_float, default=0.0,
                        help="the unet2 and unet16 stages: this times a per-picture, per-channel constant added to the "
                             "noise, so that a picture's colour comes from its prompt, not its noise")
    parser.add_argument("--schedule-shift", type=positive_float, default=1.0,
                        help="v2's UNet stages and model: the noise schedule's signal-to-noise ratio divided "
                             "by this (4 gives 32x32 latents the noise that 16x16 latents had)")
    parser.add_argument("--vae2-dir", type=Path, default=None,
                        help="vae2 writes its VAE here as a diffusers folder, and unet2 reads it from here "
                             "(else from <work-dir>/vae2)")
    parser.add_argument("--vae2-latent-channels", type=int, default=4,
                        help="v2's VAE: channels of its latents (SD 1.5's VAE has 4, SD 3's 16)")
    parser.add_argument("--vae-widen", type=int, default=1,
                        help="v2: the shapes stage's VAE this many times as wide, v1's encoder kept exactly "
                             "inside it (its latents, and so the UNet, unchanged)")
    parser.add_argument("--from-model", type=Path, default=None,
                        help="a diffusers folder (the v1 model) that the v2 stages start from, instead of "
                             "this run's own earlier stages")
    parser.add_argument("--latent-images", type=int, default=60000, help="world images encoded once for the UNet")
    parser.add_argument("--unet-steps", type=int, default=8000)
    parser.add_argument("--unet16-steps", type=int, default=2000, help="v2's UNet stage, warm-started from v1")
    parser.add_argument("--unet16-lr", type=float, default=3e-4)
    parser.add_argument("--unet2-steps", type=int, default=6000,
                        help="v2's UNet, from scratch on the vae2 stage's latents (at --unet-lr)")
    parser.add_argument("--unet16-latent-images", type=int, default=30000, help="world images for v2's UNet stage")
    parser.add_argument("--shape-images", type=int, default=6000, help="generic shape pictures for v2's UNet stage")
    parser.add_argument("--shape-share", type=float, default=0.2, help="share of each v2 UNet batch from the shapes")
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--unet-channels", type=int, nargs=3, default=[64, 96, 128])
    parser.add_argument("--text-width", type=int, default=64)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda when available")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes drawing world images ahead of the trainer (0: in the trainer; "
                             "worth it only with cores to spare, as beside a GPU)")
    parser.add_argument("--work-dir", type=Path, default=WORK, help="checkpoints and caches")
    parser.add_argument("--out-dir", type=Path, default=OUT, help="the assembled diffusers folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model in --out-dir")
    parser.add_argument("--outputs-dir", type=Path, default=REPO / "outputs", help="loss curves and samples")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from transformers import CLIPTokenizer

    from common.errors import UserError
    from common.pipeline import quiet_libraries

    quiet_libraries()
    if args.stage in ("all", "assemble") and (args.out_dir / "model_index.json").is_file() and not args.overwrite:
        # checked before hours of training, not after
        raise UserError(f"{args.out_dir} already holds a model; pass --overwrite to replace it, or --out-dir "
                        "to write elsewhere (git checkout models/micro restores the shipped one)")
    device = torch.device(args.device)
    tokenizer_dir = args.work_dir / "tokenizer"
    if args.stage in ("all", "tokenizer") or not (tokenizer_dir / "tokenizer.json").is_file():
        from micro.tokenizer import build_tokenizer

        build_tokenizer(tokenizer_dir)
    # the v2 stages keep the v1 model's tokenizer, whose token ids its text encoder learned
    tokenizer = CLIPTokenizer.from_pretrained(args.from_model / "tokenizer" if args.from_model else tokenizer_dir)
    # "all" builds the shipped model, v2: v1's vae and unet stages (whose text encoder v2 starts
    # from), then vae2, unet2, unet2-more and unet2-attention16. The other stages are measured
    # experiments, run by name.
    if args.stage in ("all", "vae"):
        train_vae(args, device)
    if args.stage == "decoder" and args.decoder_steps:
        train_decoder(args, device)
    if args.stage in ("all", "unet"):
        vae = load_final([make_vae()], args.work_dir / "vae")[0].to(device)
        train_unet(vae, tokenizer, args, device)
    if args.stage in ("all", "vae2"):
        train_vae2(args, device)
    if args.stage in ("all", "unet2"):
        train_unet2(tokenizer, args, device)
    if args.stage in ("all", "unet2-more") and args.unet2_more_steps:
        train_unet2_more(tokenizer, args, device)
    if args.stage in ("all", "unet2-attention16") and args.unet2_attention16_steps:
        train_unet2_attention16(tokenizer, args, device)
    if args.stage == "shapes" and args.shape_decoder_steps:
        train_shape_decoder(args, device)
    if args.stage == "unet16" and args.unet16_steps:
        train_unet16(tokenizer, args, device)
    if args.stage in ("all", "assemble"):
        assemble(args, tokenizer, device)


if __name__ == "__main__":
    from common.errors import run_script

    run_script(main)
