"""Pretrain the embedded micro model on the fabric world, reproducibly and resumably.

    python -m micro.pretrain                       # all stages on this machine; resumes where it stopped
    python -m micro.pretrain --stage vae           # one stage
    python -m micro.pretrain --device cuda --workers 8   # the same schedule on a GPU, images drawn in 8 processes

Stages (each checkpoints to <work-dir>/<stage>/ as it goes, with a loss curve in outputs/):
1. tokenizer  byte-pair merges from the world's captions (seconds)
2. vae        AutoencoderKL 64x64x3 <-> 16x16x4, on fresh images every batch
   decoder    the decoder alone fine-tuned for sharper edges (the latents stay the same)
3. unet       UNet2DConditionModel and CLIPTextModel trained together on cached
              VAE latents, with 10% empty captions so classifier-free guidance works
4. assemble   a StableDiffusionPipeline folder in models/micro (safetensors) and
              a sample grid in outputs/micro_pretraining_samples.png

The world is procedural, so every random draw is seeded by (seed, stage, batch):
a resume continues with exactly the batches it would have seen, and the same
command on a GPU trains on the same images as on a CPU.
"""

import argparse
import collections
import multiprocessing
import textwrap
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from micro import world

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "models" / "micro_pretraining"
OUT = REPO / "models" / "micro"
STAGE_SEEDS = {"vae": 1, "latents": 2, "unet": 3, "decoder": 4}

VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                  layers_per_block=1, norm_num_groups=16, sample_size=64,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
# Stable Diffusion 1.5's noise schedule.
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                prediction_type="epsilon", clip_sample=False, steps_offset=1)


# Attention sits at the 8x8 and 4x4 levels (and the middle), not at 16x16: self-attention
# over 256 positions was half the cost of every update (docs/micro_model.md, "Pretraining").
# Fabric patterns are local, so convolutions draw them; the prompt still reaches every level
# through the 8x8 and 4x4 cross-attention. The saved time buys width at 16x16, where the
# fine detail is drawn.
UNET_BLOCKS = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def unet_config(channels, text_width):
    return dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(channels),
                layers_per_block=1, norm_num_groups=16, cross_attention_dim=text_width, attention_head_dim=8,
                **UNET_BLOCKS)


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
    from common.checkpoints import load_checkpoint, save_checkpoint
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
        state = load_checkpoint(checkpoints[-1], {**parameters, **averaged}, optimizer, schedule, generator)
        if state["settings"] != settings:
            raise UserError(f"{checkpoints[-1]} was trained with {state['settings']}, not {settings}; "
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
            for old in folder.glob("checkpoint-*"):
                if old.name != f"checkpoint-{done}":
                    for path in old.iterdir():
                        path.unlink()
                    old.rmdir()
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

def make_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**VAE_CONFIG)


def make_text_encoder(tokenizer, width, layers):
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = tokenizer.get_vocab()
    torch.manual_seed(1)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))


def make_unet(channels, text_width):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(**unet_config(channels, text_width))


def fresh_images(stage, steps, args):
    """batches(start) for run_stage: world batches start..steps-1 of `stage`, never seen before."""
    return lambda start: prefetch(partial(world_batch, stage, size=args.vae_batch, seed=args.seed),
                                  range(start, steps), args.workers)


def train_vae(args, device):
    vae = make_vae().to(device)

    def loss_fn(pixels_and_specs, update, generator):
        images = to_tensor(pixels_and_specs[0]).to(device)
        posterior = vae.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        # L1 keeps edges (dots, stripes) sharper than MSE alone
        return F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images) + 1e-4 * kl

    run_stage(args.work_dir / "vae", [vae], args.vae_steps, 1e-3, fresh_images("vae", args.vae_steps, args),
              loss_fn, args.seed, settings={"batch": args.vae_batch}, plot_dir=args.outputs_dir)
    return vae


def train_decoder(args, device):
    """Sharpen the decoder alone, as Stability did for SD's ft-MSE decoder: the encoder, and so the
    latents the UNet learns from, stay exactly as they are; only the pictures made from them improve.

    An L1 loss on image gradients rewards edges, so that a 4x4-pixel diamond is less often decoded
    as a round dot (which changes the pattern family); docs/micro_model.md measures how often
    the judge still recognises the family after this stage.
    """
    vae = load_final([make_vae()], args.work_dir / "vae")[0].to(device)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)

    def loss_fn(pixels_and_specs, update, generator):
        images = to_tensor(pixels_and_specs[0]).to(device)
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
            latent = posterior.mean + posterior.std * noise
        reconstruction = vae.decode(latent).sample
        edges = sum(F.l1_loss(reconstruction.diff(dim=axis), images.diff(dim=axis)) for axis in (-1, -2))
        return F.l1_loss(reconstruction, images) + F.mse_loss(reconstruction, images) + edges

    run_stage(args.work_dir / "decoder", [vae], args.decoder_steps, 5e-4,
              fresh_images("decoder", args.decoder_steps, args), loss_fn, args.seed,
              settings={"batch": args.vae_batch}, plot_dir=args.outputs_dir)
    return vae


def latent_scaling_factor(vae, seed, device):
    """1 / std of the VAE's latents over fresh images, as SD's 0.18215 was chosen."""
    with torch.no_grad():
        pixels, _ = world_batch("vae", 10 ** 6, 256, seed)
        return float(1.0 / vae.encode(to_tensor(pixels).to(device)).latent_dist.mean.std())


def cached_latents(vae, args, device, chunk=256):
    """Latents (posterior means) and specs of `--latent-images` world images, encoded once.

    Encoding costs as much as a third of a UNet update on a CPU, and with a few
    epochs over 10^5 images the UNet never sees a latent often enough to memorise
    it. Captions are drawn afresh for every batch, so the wording still varies.
    """
    from safetensors.torch import load_file

    from common.saving import save_json, save_safetensors

    folder = args.work_dir / "latents"
    latent_file, spec_file = folder / "latents.safetensors", folder / "specs.json"
    if latent_file.is_file() and spec_file.is_file():
        import json

        specs = json.loads(spec_file.read_text())
        if len(specs) == args.latent_images:
            return load_file(str(latent_file))["latents"], specs
    latents, specs = [], []
    chunks = range((args.latent_images + chunk - 1) // chunk)
    with torch.no_grad():
        for pixels, chunk_specs in tqdm(prefetch(partial(world_batch, "latents", size=chunk, seed=args.seed),
                                                 chunks, args.workers), total=len(chunks),
                                        desc="encode the world"):
            latents.append(vae.encode(to_tensor(pixels).to(device)).latent_dist.mean.cpu())
            specs.extend(chunk_specs)
    latents = torch.cat(latents)[:args.latent_images].contiguous()
    specs = specs[:args.latent_images]
    save_safetensors({"latents": latents}, latent_file)
    save_json(specs, spec_file)
    return latents, specs


def train_unet(vae, tokenizer, args, device):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    text_encoder = make_text_encoder(tokenizer, args.text_width, args.text_layers).to(device)
    unet = make_unet(args.unet_channels, args.text_width).to(device)
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    vae.requires_grad_(False)
    scale = latent_scaling_factor(vae, args.seed, device)
    latents, specs = cached_latents(vae, args, device)

    def batch_at(update):
        rng = np.random.default_rng([args.seed, STAGE_SEEDS["unet"], update])
        rows = rng.integers(len(specs), size=args.unet_batch)
        # 10% empty captions teach the unconditional prediction that classifier-free guidance needs
        captions = ["" if rng.random() < 0.1 else world.caption(specs[row], rng) for row in rows]
        return torch.from_numpy(rows), captions

    def loss_fn(rows_and_captions, update, generator):
        rows, captions = rows_and_captions
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        clean = latents[rows].to(device) * scale
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, 1000, (len(clean),), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        # Min-SNR-5 weighting (Hang et al., 2023): the nearly clean timesteps, easy and
        # many, stop dominating the gradient; the model learns composition sooner.
        snr = compute_snr(noise_scheduler, timesteps)
        weights = snr.clamp(max=5.0) / snr
        return (F.mse_loss(prediction, noise, reduction="none").mean((1, 2, 3)) * weights).mean()

    run_stage(args.work_dir / "unet", [unet, text_encoder], args.unet_steps, args.unet_lr,
              lambda start: map(batch_at, range(start, args.unet_steps)), loss_fn, args.seed,
              ema_decay=0.999, settings={"batch": args.unet_batch, "channels": list(args.unet_channels),
                                         "blocks": list(UNET_BLOCKS["down_block_types"]),
                                         "text_width": args.text_width, "text_layers": args.text_layers,
                                         "latent_images": args.latent_images}, plot_dir=args.outputs_dir)
    return scale


def assemble(args, tokenizer, device):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from common.generation import generate
    from common.grids import labelled_grid
    from common.saving import save_figure

    # the fine-tuned decoder where that stage ran (its encoder is the vae stage's, unchanged)
    decoder_done = (args.work_dir / "decoder" / "final.safetensors").is_file()
    vae = load_final([make_vae()], args.work_dir / ("decoder" if decoder_done else "vae"))[0].to(device)
    unet, text_encoder = load_final([make_unet(args.unet_channels, args.text_width),
                                     make_text_encoder(tokenizer, args.text_width, args.text_layers)],
                                    args.work_dir / "unet")
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, args.seed, device))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(**SCHEDULE), safety_checker=None,
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
    parser.add_argument("--stage", choices=["all", "tokenizer", "vae", "decoder", "unet", "assemble"], default="all")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--decoder-steps", type=int, default=2000, help="decoder-only fine-tuning; 0 skips it")
    parser.add_argument("--latent-images", type=int, default=60000, help="world images encoded once for the UNet")
    parser.add_argument("--unet-steps", type=int, default=8000)
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
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    if args.stage in ("all", "vae"):
        train_vae(args, device)
    if args.stage in ("all", "decoder") and args.decoder_steps:
        train_decoder(args, device)
    if args.stage in ("all", "unet"):
        vae = load_final([make_vae()], args.work_dir / "vae")[0].to(device)
        train_unet(vae, tokenizer, args, device)
    if args.stage in ("all", "assemble"):
        assemble(args, tokenizer, device)


if __name__ == "__main__":
    from common.errors import run_script

    run_script(main)
