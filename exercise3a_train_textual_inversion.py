"""Exercise 3a: textual inversion, teaching the model one new word and nothing else.

What this teaches
-----------------
Textual inversion (Gal et al. 2022) freezes the whole model, UNet, VAE and
text encoder alike, and learns a single new word vector: the embedding of
the token "<african-fabric>". Training asks: which vector, placed where a
word goes, makes the frozen model draw your images? The answer is one row of
768 numbers (3 KB for SD 1.5). It captures a style well and a precise subject
less well, because the frozen UNet can only draw what it already can.

Only the new token's vector may change. Instead of training the whole
embedding matrix and restoring the other 49,408 rows after every step (as
diffusers' example does, since AdamW's weight decay touches every row), the
new vector is its own parameter, swapped in where the token appears. No other
row can change, and checkpoints hold 768 numbers instead of the whole matrix.

What to look at
---------------
outputs/training_progress_ti/step_NNNNN.png   4 fixed prompts every 500 updates
outputs/exercise3a_loss_curve.png             raw (faint) and smoothed (bold) loss
outputs/exercise3a_summary.json               updates, time, final loss, file size, settings
models/fabric_textual_inversion/learned_embeds.safetensors    use it with --ti-file

Run it
------
    python exercise3a_train_textual_inversion.py
    python exercise1_generate.py --lora-dir none --ti-file models/fabric_textual_inversion/learned_embeds.safetensors
"""

import time
from pathlib import Path

import torch

from common.cli import make_parser, positive_float, positive_int
from common.errors import UserError, run_script
from common.latent_cache import LatentCache, noisy_batch

# ---------------------------------------------------------------------------
# Configuration (the course's settings)
# ---------------------------------------------------------------------------
PLACEHOLDER_TOKEN = "<african-fabric>"
INITIALIZER_TOKEN = "pattern"
# Style captions: the token names a look, not an object in the scene.
STYLE_TEMPLATES = [
    "a fabric pattern in the style of {}",
    "a textile in the style of {}",
    "a painting in the style of {}",
    "a close-up photo of a fabric in the style of {}",
    "a swatch of cloth in the style of {}",
    "a rendering in the style of {}",
    "a print in the style of {}",
    "an african fabric in the style of {}",
]
PROGRESS_TEMPLATES = [
    "a fabric pattern in the style of {}",
    "a beautiful dress made of {} african fabric pattern, fashion photography",
    "a ceramic vase decorated with {} african fabric pattern",
    "a painting in the style of {}",
]
PROGRESS_SEEDS = [1000, 1001, 1002, 1003]
EMBEDDING_FILE = "learned_embeds.safetensors"


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0], adapters=False)
    data = parser.add_argument_group("data")
    data.add_argument("--instance-dir", type=Path, default=Path("training_images"), help="your subject's images")
    data.add_argument("--placeholder-token", default=PLACEHOLDER_TOKEN, help="the new word to learn")
    data.add_argument("--initializer-token", default=INITIALIZER_TOKEN,
                      help="an existing word whose embedding is the starting point")
    data.add_argument("--no-flip", dest="flip", action="store_false", help="do not mirror images at random")
    train = parser.add_argument_group("training")
    train.add_argument("--max-train-steps", type=positive_int, default=3000, help="optimizer updates")
    train.add_argument("--learning-rate", type=positive_float, default=5e-4, help="AdamW learning rate")
    train.add_argument("--train-batch-size", type=positive_int, default=1, help="images per update")
    train.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                       help="auto: fp16 on CUDA, none on CPU (bf16 also runs on a CPU, slowly)")
    train.add_argument("--no-cache", dest="cache", action="store_false",
                       help="run the frozen VAE every update instead of once (slower; for measuring)")
    train.add_argument("--checkpoint-every", type=positive_int, default=500, help="updates between checkpoints")
    train.add_argument("--progress-every", type=positive_int, default=500, help="updates between progress grids")
    out = parser.add_argument_group("embedding output")
    out.add_argument("--adapter-dir", default="auto",
                     help=f"where {EMBEDDING_FILE} and checkpoints go; auto: "
                          "models/micro_trained/fabric_textual_inversion on micro, "
                          "models/fabric_textual_inversion on SD 1.5")
    out.add_argument("--resume", default=None, help="'latest' or a checkpoint-N folder to continue from")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an embedding already in --adapter-dir (the old file is moved to a backup)")
    parser.set_defaults(seed=0)
    return parser.parse_args(argv)


def fingerprint(args, num_images):
    return {"base_model": str(args.base_model), "resolution": args.resolution, "learning_rate": args.learning_rate,
            "placeholder_token": args.placeholder_token, "initializer_token": args.initializer_token,
            "train_batch_size": args.train_batch_size, "flip": args.flip, "seed": args.seed,
            "num_instance_images": num_images}


def add_placeholder_token(pipe, token, initializer):
    """Add `token` to the tokenizer; return (its id, a trainable vector started at the initializer's embedding)."""
    if pipe.tokenizer.add_tokens(token) == 0:
        raise UserError(f"--placeholder-token {token} is already a word of this tokenizer; pick a new one")
    token_id = pipe.tokenizer.convert_tokens_to_ids(token)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    init_ids = pipe.tokenizer(initializer, add_special_tokens=False).input_ids
    if not init_ids:
        raise UserError(f"--initializer-token '{initializer}' encodes to nothing; pick a plain word")
    table = pipe.text_encoder.get_input_embeddings().weight
    # A word split into several pieces starts from their average.
    start = table[init_ids].detach().float().mean(0)
    return token_id, torch.nn.Parameter(start.clone())


def swap_in_learned_vector(embedding_layer, token_id, vector):
    """Make the embedding layer return `vector` wherever `token_id` appears (the table itself never changes)."""
    def hook(module, inputs, output):
        mask = (inputs[0] == token_id).unsqueeze(-1)
        return torch.where(mask, vector.to(output.dtype), output)

    return embedding_layer.register_forward_hook(hook)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from common.device import pick_device
    from common.generation import generate
    from common.grids import labelled_grid
    from common.base_model import resolve_base
    from common.pipeline import load_pipeline
    from common.saving import save_figure, save_json, save_safetensors
    from common.training import (LossLog, PhaseClock, adamw, load_checkpoint, make_accelerator, plot_loss_curves,
                                 prepare_run, sampling, save_checkpoint, smooth)
    from common.training_images import load_training_images

    # -----------------------------------------------------------------------
    # Step 1: check everything a mistake could break before any work starts.
    # -----------------------------------------------------------------------
    device, _ = pick_device(args.device)
    args.base_model, where = resolve_base(args, device, role="trained_ti")
    images = load_training_images(args.instance_dir, args.resolution)
    settings = fingerprint(args, len(images))
    checkpoint = prepare_run(args, settings, [EMBEDDING_FILE])

    # -----------------------------------------------------------------------
    # Step 2: load the frozen model; add the new word and its one trainable vector.
    # -----------------------------------------------------------------------
    accelerator, device, weight_dtype, mixed_precision = make_accelerator(device, args.mixed_precision)
    pipe = load_pipeline(where, device, weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    token_id, vector = add_placeholder_token(pipe, args.placeholder_token, args.initializer_token)
    vector = torch.nn.Parameter(vector.data.to(device))
    swap_in_learned_vector(pipe.text_encoder.get_input_embeddings(), token_id, vector)
    latents_of = LatentCache(pipe.vae, {"instance": images}, args.flip, args.cache, device, weight_dtype)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = adamw([vector], device, lr=args.learning_rate, weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    history = {"total": []}
    first_update, elapsed_before = 0, 0.0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, {"vector": vector}, optimizer, lr_scheduler, generator,
                                accelerator.process_index)
        first_update, history, elapsed_before = state["update"], state["history"], state["seconds"]
        print(f"resuming from {checkpoint} at update {first_update}")
    losses = LossLog(history, args.adapter_dir)
    clock = PhaseClock()

    def save_state(update):
        losses.flush()  # a non-finite loss stops the run here, before its weights are saved
        # Every process saves its own random state; process 0 also the shared rest.
        with clock.phase("checkpoints"):
            save_checkpoint(args.adapter_dir / f"checkpoint-{update}", {"vector": vector}, optimizer, lr_scheduler,
                            generator, {"update": update, "history": history, "settings": settings,
                                        "seconds": elapsed_before + time.perf_counter() - started},
                            rank=accelerator.process_index)

    def save_progress_grid(update):
        if not accelerator.is_main_process:
            return
        losses.flush()
        prompts = [template.format(args.placeholder_token) for template in PROGRESS_TEMPLATES]
        with clock.phase("progress grids"), sampling(accelerator, []):
            pictures = generate(pipe, prompts, PROGRESS_SEEDS, steps=args.steps, resolution=args.resolution,
                                guidance=args.guidance, batch_size=len(prompts), desc="progress grid")
        save_figure(labelled_grid(pictures, prompts, cols=4, suptitle=f"after {update} updates"),
                    args.output_dir / "training_progress_ti" / f"step_{update:05d}.png")

    # -----------------------------------------------------------------------
    # Step 3: the loop. The text encoder must run every update (its input,
    # the new vector, changes); the VAE's latents come from the cache.
    # -----------------------------------------------------------------------
    # The captions' token ids never change: tokenize the templates once.
    captions = [template.format(args.placeholder_token) for template in STYLE_TEMPLATES]
    caption_ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(device)
    started = time.perf_counter()
    first_update_seconds = 0.0
    bar = tqdm(range(first_update, args.max_train_steps), initial=first_update, total=args.max_train_steps,
               desc="TI updates", disable=not accelerator.is_main_process)
    with clock.phase("training"):
        try:
            for update in bar:
                latents = latents_of.draw("instance", args.train_batch_size, generator)
                picks = torch.randint(0, len(STYLE_TEMPLATES), (args.train_batch_size,), generator=generator)
                noisy, timesteps, target = noisy_batch(noise_scheduler, latents, generator)
                with accelerator.autocast():
                    embeddings = pipe.text_encoder(caption_ids[picks.to(device)])[0]
                    prediction = pipe.unet(noisy, timesteps, embeddings).sample
                loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if losses.add(total=loss) or update == first_update:
                    losses.flush()  # after the first update too: its time (warm-up) is reported apart
                    bar.set_postfix(loss=f"{losses.smoothed:.4f}")
                    if update == first_update:
                        first_update_seconds = time.perf_counter() - started
                done = update + 1
                if done % args.checkpoint_every == 0 or done == args.max_train_steps:
                    save_state(done)
                if done % args.progress_every == 0 or done == args.max_train_steps:
                    save_progress_grid(done)
        except KeyboardInterrupt:
            if losses.updates > first_update:
                save_state(losses.updates)
                print(f"saved {args.adapter_dir}/checkpoint-{losses.updates}; continue with --resume latest")
            raise
        losses.flush()
    bar.close()
    seconds = elapsed_before + time.perf_counter() - started

    # -----------------------------------------------------------------------
    # Step 4: save the word: {token: vector}, loadable by pipe.load_textual_inversion.
    # -----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    path = save_safetensors({args.placeholder_token: vector.detach().float()}, args.adapter_dir / EMBEDDING_FILE)
    plot_loss_curves(history, args.output_dir / "exercise3a_loss_curve.png",
                     f"Textual inversion: {len(history['total'])} optimizer updates")
    summary = {
        "optimizer_updates": len(history["total"]),
        "wall_seconds": round(seconds, 1),
        "seconds_per_update": round(seconds / len(history["total"]), 4),
        "final_smoothed_loss": round(smooth(history["total"])[-1], 5),
        "file_bytes": {EMBEDDING_FILE: path.stat().st_size},
        "token": args.placeholder_token,
        "device": device.type,
        "mixed_precision": mixed_precision,
        "frozen_weights_dtype": str(weight_dtype).removeprefix("torch."),
        "cached_latents": args.cache,
        "settings": settings,
        **clock.summary(losses.updates - first_update, first_update_seconds),
    }
    save_json(summary, args.output_dir / "exercise3a_summary.json")
    print(f"wrote {path} ({path.stat().st_size} bytes, token {args.placeholder_token}), "
          f"{args.output_dir / 'exercise3a_loss_curve.png'}, {args.output_dir / 'exercise3a_summary.json'}")
    print(clock.describe(losses.updates - first_update, first_update_seconds))
    return pipe, vector  # for inspection (the tests check that nothing else changed)


if __name__ == "__main__":
    run_script(main)
