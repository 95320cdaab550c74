"""Exercise 3b: train a DreamBooth LoRA with prior preservation.

What this teaches
-----------------
DreamBooth binds the rare word "sks" to your ten images by training on the
caption "a sks african fabric pattern". Two ideas make it work:

* LoRA. The UNet's attention projections stay frozen; beside each one sits a
  pair of small matrices (B @ A, rank 4) whose product is added to it. Only
  those train: 797k numbers for SD 1.5 instead of 860 million. (On the micro
  model the text encoder's attention gets such pairs too, and the identifier's
  own token embeddings train, so that "sks" comes to mean something that
  prompts without it do not carry; and 5% of the instance images train with
  the empty prompt, which guidance then subtracts from every prompt: see
  MICRO_EMPTY_PROMPT_SHARE.)
* Prior preservation. Every update also trains on images that the untouched
  base model drew for "a fabric pattern". Their loss keeps the class word
  meaning what it meant, so the model learns "sks" without forgetting fabric.

Everything is counted in optimizer updates: 800 updates = 800 weight changes.

What to look at
---------------
outputs/training_progress_lora/step_NNNNN.png   4 fixed prompts and seeds every 100 updates:
                                                 watch "sks" turn into your fabric while
                                                 "a fabric pattern" stays generic
outputs/exercise3b_loss_curves.png               total, instance and prior loss
outputs/exercise3b_summary.json                  updates, time, final losses, sizes, settings
models/fabric_lora/                              the adapter, in PEFT and diffusers format
                                                 (on micro: models/micro_trained/fabric_lora/)

Run it
------
    python exercise3b_train_lora.py                           # 800 updates, 100 class images
    python exercise3b_train_lora.py --resume latest           # continue after Ctrl-C
    python exercise3b_train_lora.py --no-train-text-encoder   # no text-encoder LoRA (SD 1.5's default)
    accelerate launch exercise3b_train_lora.py                # several GPUs or machines

Try it: generate "a dress made of african fabric pattern" (no "sks") after
training. If it shows your fabric too, the adapter leaked past the identifier
(language drift). On micro, train once with --proportion-empty-prompts 0
--no-train-identifier to see that happen; the README measures how far, and why
guidance makes it worse.
"""

import argparse
import time
from pathlib import Path

import torch

from common.base_model import MICRO
from common.cli import auto_or, make_parser, non_negative_float, positive_float, positive_int, share
from common.errors import UserError, run_script
from common.latent_cache import LatentCache, noisy_batch

# ---------------------------------------------------------------------------
# Configuration (the course's table)
# ---------------------------------------------------------------------------
INSTANCE_PROMPT = "a sks african fabric pattern"
CLASS_PROMPT = "a fabric pattern"
# diffusers' DreamBooth LoRA adapts the UNet's attention projections.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Training a LoRA in the text encoder's attention too (diffusers' --train_text_encoder)
# lets "sks" come to mean something of its own. On micro it is on by default: its
# tiny text encoder barely tells "sks" apart (adding it moves the prompt's encoding
# by 18% of its norm, a colour word by 62%), and without it the UNet LoRA changed
# prompts with and without "sks" alike. Measured on micro (800 updates, 3 seeds; judge
# similarity to the training images with "sks" / without; base 0.475 / 0.468):
# attention only 0.504 / 0.502 (one seed); attention + ResNet convolutions
# 0.662 / 0.629, subject's stars drawn 1%; attention + text encoder 0.741 / 0.675,
# stars 26% with "sks" and 7% without (README, "The lesson, measured").
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Two more micro defaults against language drift (prompts without "sks" taking on the
# subject), measured over 3 seeds (judge similarity to the training images, with "sks" /
# without; base 0.475 / 0.468; README, "The lesson, measured"):
# * Classifier-free guidance draws uncond + 7.5 * (cond - uncond), so whatever the LoRA
#   adds to the conditional prediction of "an african fabric pattern" comes out magnified
#   (it moved that prompt 0.055 at guidance 1, 0.187 at 7.5). Training 5% of instance
#   images with the empty prompt moves the unconditional prediction the same way, and
#   guidance subtracts it again: without "sks" 0.675 -> 0.448, with "sks" 0.741 -> 0.713.
# * That subtraction also weakens "sks"; training the identifier's own token embeddings
#   ("pivotal tuning", as in diffusers' advanced DreamBooth script) gives it a handle
#   that other prompts lack: stars in 35% of "sks" pictures, 2% without.
IDENTIFIER = "sks"
MICRO_EMPTY_PROMPT_SHARE = 0.05
IDENTIFIER_PARAMETER = "text_encoder.identifier_embeddings"  # its name in checkpoints
PROGRESS_PROMPTS = [
    "a sks african fabric pattern",
    "a beautiful dress made of sks african fabric pattern, fashion photography",
    "a ceramic vase decorated with sks african fabric pattern",
    "a fabric pattern",  # the class prompt: it should stay generic
]
PROGRESS_SEEDS = [1000, 1001, 1002, 1003]
# what a run writes into --adapter-dir (text_encoder/ only with --train-text-encoder,
# identifier_embeddings.safetensors only with --train-identifier)
ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json", "pytorch_lora_weights.safetensors",
                 "text_encoder", "identifier_embeddings.safetensors"]


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0], adapters=False)
    data = parser.add_argument_group("data")
    data.add_argument("--instance-dir", type=Path, default=Path("training_images"), help="your subject's images")
    data.add_argument("--instance-prompt", default=INSTANCE_PROMPT, help="caption of every instance image")
    data.add_argument("--class-prompt", nargs="+", default=[CLASS_PROMPT],
                      help="what the base model draws as the prior; several prompts share the class images")
    data.add_argument("--class-dir", type=Path, default=Path("models/class_images"),
                      help="cache of class images (a subfolder per base model, prompt and resolution)")
    data.add_argument("--num-class-images", type=positive_int, default=100, help="class images for the prior")
    data.add_argument("--no-prior-preservation", dest="prior_preservation", action="store_false",
                      help="train on the instance images alone (to see what forgetting looks like)")
    data.add_argument("--prior-loss-weight", type=non_negative_float, default=1.0, help="lambda of the prior loss")
    data.add_argument("--proportion-empty-prompts", type=auto_or(share), default="auto",
                      help="share of instance images trained with the empty prompt instead of --instance-prompt "
                           "(diffusers' flag of that name); guidance subtracts what the empty prompt learns, "
                           f"which pulls the subject out of prompts without the identifier. auto: "
                           f"{MICRO_EMPTY_PROMPT_SHARE} on micro, 0 on SD 1.5")
    data.add_argument("--no-flip", dest="flip", action="store_false", help="do not mirror images at random")
    train = parser.add_argument_group("training")
    train.add_argument("--max-train-steps", type=positive_int, default=800, help="optimizer updates")
    train.add_argument("--learning-rate", type=positive_float, default=1e-4, help="AdamW learning rate")
    train.add_argument("--rank", type=positive_int, default=4, help="LoRA rank r")
    train.add_argument("--lora-targets", nargs="+", default=LORA_TARGETS,
                       help="UNet module names the LoRA adapts (PEFT suffix match), e.g. add conv1 conv2 "
                            "for the ResNet convolutions")
    train.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default="auto",
                       help="also train a LoRA in the text encoder's attention, so that the identifier gets "
                            "a meaning of its own; auto: on for micro, off for SD 1.5 (diffusers' default)")
    train.add_argument("--train-identifier", action=argparse.BooleanOptionalAction, default="auto",
                       help="also train the token embeddings of --identifier (pivotal tuning); "
                            "auto: on for micro, off for SD 1.5")
    train.add_argument("--identifier", default=IDENTIFIER,
                       help="the rare word of --instance-prompt that names your subject")
    train.add_argument("--identifier-learning-rate", type=positive_float, default=5e-3,
                       help="AdamW learning rate of the identifier's token embeddings")
    train.add_argument("--lora-alpha", type=positive_float, default=32,
                       help="LoRA alpha; the adapter's scale is alpha / r (32 / 4 = 8, as the release)")
    train.add_argument("--train-batch-size", type=positive_int, default=1,
                       help="instance images per update (and as many class images)")
    train.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                       help="auto: fp16 on CUDA, none on CPU (bf16 also runs on a CPU, slowly)")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default="auto",
                       help="recompute the UNet's activations in the backward pass: less GPU memory, "
                            "slower updates; auto: on only for a CUDA GPU too small to train without it")
    train.add_argument("--compile", action="store_true",
                       help="compile the UNet's training step with torch.compile: the first update waits while "
                            "it compiles, to make later ones faster (docs/performance.md)")
    train.add_argument("--no-cache", dest="cache", action="store_false",
                       help="run the frozen VAE and text encoder every update instead of once (slower; "
                            "for measuring what caching saves)")
    train.add_argument("--checkpoint-every", type=positive_int, default=200, help="updates between checkpoints")
    train.add_argument("--progress-every", type=positive_int, default=100, help="updates between progress grids")
    out = parser.add_argument_group("adapter output")
    out.add_argument("--adapter-dir", default="auto",
                     help="where the LoRA goes; auto: models/micro_trained/fabric_lora on micro, "
                          "models/fabric_lora on SD 1.5")
    out.add_argument("--resume", default=None, help="'latest' or a checkpoint-N folder to continue from")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an adapter already in --adapter-dir (the old files are moved to a backup)")
    parser.set_defaults(seed=0)
    args = parser.parse_args(argv)
    if args.identifier not in args.instance_prompt.split():
        parser.error(f"--identifier {args.identifier!r} is not a word of --instance-prompt {args.instance_prompt!r}")
    if args.prior_preservation and args.num_class_images < len(args.class_prompt):
        parser.error(f"--num-class-images {args.num_class_images} is fewer than the "
                     f"{len(args.class_prompt)} class prompts; give each prompt at least one image")
    return args


def on_for_micro(setting, args):
    """A flag whose auto means: on for the micro model, off for SD 1.5."""
    return args.base_model == MICRO if setting == "auto" else setting


def text_encoder_trains(args):
    return on_for_micro(args.train_text_encoder, args)


def identifier_trains(args):
    return on_for_micro(args.train_identifier, args)


def empty_prompt_share(args):
    """--proportion-empty-prompts with auto resolved for the base model."""
    if args.proportion_empty_prompts == "auto":
        return MICRO_EMPTY_PROMPT_SHARE if args.base_model == MICRO else 0.0
    return args.proportion_empty_prompts


def check_lora_targets(unet, targets):
    """Refuse target names that match no UNet module (PEFT's suffix rule), before any image is drawn."""
    names = [name for name, _ in unet.named_modules()]
    unknown = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unknown:
        raise UserError(f"--lora-targets {' '.join(unknown)} matches no module of this UNet; "
                        f"try the default (auto) or names such as {' '.join(LORA_TARGETS)}")


def fingerprint(args, num_instance_images):
    """The settings that must match for a resume to continue the same training."""
    return {"base_model": str(args.base_model), "resolution": args.resolution, "rank": args.rank,
            "lora_alpha": args.lora_alpha, "lora_targets": args.lora_targets,
            "train_text_encoder": text_encoder_trains(args), "learning_rate": args.learning_rate,
            "train_identifier": identifier_trains(args), "identifier": args.identifier,
            "identifier_learning_rate": args.identifier_learning_rate if identifier_trains(args) else None,
            "instance_prompt": args.instance_prompt, "class_prompt": args.class_prompt,
            "prior_preservation": args.prior_preservation, "prior_loss_weight": args.prior_loss_weight,
            "train_batch_size": args.train_batch_size, "flip": args.flip, "seed": args.seed,
            "proportion_empty_prompts": empty_prompt_share(args),
            "num_instance_images": num_instance_images,
            "num_class_images": args.num_class_images if args.prior_preservation else 0}


def encode_prompt(pipe, prompt, device, text_encoder=None):
    """CLIP's last hidden states for a prompt (or a list): what the UNet's cross-attention reads."""
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)
    return (text_encoder or pipe.text_encoder)(ids)[0]


class Encoders:
    """The VAE never changes here, so by default its latents of the training
    images are computed once (common/latent_cache.py); so are the embeddings of
    the prompts, unless the text encoder trains (then they change every update).
    With cache=False both run on every update, as in the original course; the
    numbers are the same, only slower.

    `prompts_by_role` gives each role one caption for all its images, or a list
    with one caption per image (class images drawn from several class prompts).
    `train_text_encoder`: anything in the text encoder trains (its LoRA or the
    identifier's embeddings), so embeddings need gradients.
    `empty_prompt_share`: {role: share of its drawn images captioned "" instead}.
    """

    def __init__(self, pipe, images_by_role, prompts_by_role, flip, cache, train_text_encoder, device, dtype,
                 empty_prompt_share=None):
        self.pipe, self.device = pipe, device
        self.train_text_encoder = train_text_encoder
        self.empty_prompt_share = {role: share for role, share in (empty_prompt_share or {}).items() if share > 0}
        # Under `accelerate launch` training must run the text encoder through Accelerate's
        # wrapper (which averages its gradients), while the pipeline samples with the bare model.
        self.text_encoder = pipe.text_encoder
        self.images = LatentCache(pipe.vae, images_by_role, flip, cache, device, dtype)
        self.prompts, self.prompt_of_image = {}, {}
        for role, images in images_by_role.items():
            captions = prompts_by_role[role]
            captions = [captions] * len(images) if isinstance(captions, str) else list(captions)
            if len(captions) != len(images):
                raise ValueError(f"{role}: {len(captions)} captions for {len(images)} images")
            # distinct, in order of first use; the empty prompt, where used, gets an index (and a cached embedding)
            self.prompts[role] = list(dict.fromkeys(captions + ([""] if role in self.empty_prompt_share else [])))
            self.prompt_of_image[role] = torch.tensor([self.prompts[role].index(c) for c in captions])
        self.embeddings = None
        if cache and not train_text_encoder:
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
            return latents, embeddings[captions.to(embeddings.device)]
        # Only the captions drawn this update go through the text encoder.
        needed, position = torch.unique(captions, return_inverse=True)
        with torch.set_grad_enabled(self.train_text_encoder):
            embeddings = encode_prompt(self.pipe, [self.prompts[role][i] for i in needed.tolist()], self.device,
                                       self.text_encoder)
        return latents, embeddings[position.to(embeddings.device)]


def add_lora(unet, text_encoder, args):
    """Put rank-r LoRA matrices beside the UNet's --lora-targets (and the text encoder's
    attention when it trains).

    Returns ({"unet": config[, "text_encoder": config]}, trainable parameters by name).
    B starts at zero, so the adapted models start out exactly equal to the base.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    models = {"unet": (unet, args.lora_targets)}
    if text_encoder_trains(args):
        models["text_encoder"] = (text_encoder, TEXT_ENCODER_LORA_TARGETS)
    configs, trainable = {}, {}
    torch.manual_seed(args.seed)  # the LoRA's random A matrices
    for role, (model, targets) in models.items():
        configs[role] = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                   target_modules=targets)
        model.add_adapter(configs[role])
        cast_training_params(model, dtype=torch.float32)  # trainable weights stay fp32 under mixed precision
        # the UNet's names stay bare, so checkpoints read as they always did
        prefix = "" if role == "unet" else role + "."
        trainable.update({prefix + name: p for name, p in model.named_parameters() if p.requires_grad})
    return configs, trainable


def add_identifier_embeddings(pipe, args, trainable):
    """Trainable copies of the identifier's token embeddings, hooked into the text encoder
    (common/identifier_embeddings.py), added to `trainable`."""
    from common.identifier_embeddings import attach, identifier_token_ids

    identifier = attach(pipe.text_encoder, identifier_token_ids(pipe.tokenizer, args.identifier))
    trainable[IDENTIFIER_PARAMETER] = identifier.vectors
    return identifier


def training_step(unet, noise_scheduler, encoders, batch_size, generator, prior_preservation, prior_loss_weight):
    """One DreamBooth update's loss: draw images, add noise, predict it, compare.

    Returns (total, instance, prior) losses; prior is None without prior preservation.
    """
    from common.prior_preservation import prior_preservation_loss

    roles = ["instance", "class"] if prior_preservation else ["instance"]
    # Instances first, then class images: one UNet pass serves both halves.
    latents, embeddings = (torch.cat(parts) for parts in zip(*(encoders.draw(role, batch_size, generator)
                                                               for role in roles)))
    noisy, timesteps, target = noisy_batch(noise_scheduler, latents, generator)
    prediction = unet(noisy, timesteps, embeddings).sample
    return prior_preservation_loss(prediction, target, batch_size, prior_loss_weight)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft.utils import get_peft_model_state_dict
    from tqdm.auto import tqdm

    from common.class_images import class_image_folder, ensure_class_images, shares
    from common.device import pick_device
    from common.generation import generate
    from common.grids import labelled_grid
    from common.lora_saving import save_lora
    from common.base_model import resolve_base
    from common.pipeline import load_pipeline
    from common.saving import save_figure, save_json
    from common.training import (LossLog, PhaseClock, adamw, gradient_checkpointing_needed, load_checkpoint,
                                 make_accelerator, plot_loss_curves, prepare_run, sampling, save_checkpoint,
                                 smooth)
    from common.training_images import load_training_images

    # -----------------------------------------------------------------------
    # Step 1: check everything a mistake could break before any work starts.
    # -----------------------------------------------------------------------
    device, dtype = pick_device(args.device)
    args.base_model, where = resolve_base(args, device, role="trained_lora")
    instance_images = load_training_images(args.instance_dir, args.resolution)
    settings = fingerprint(args, len(instance_images))
    checkpoint = prepare_run(args, settings, ADAPTER_FILES)

    # -----------------------------------------------------------------------
    # Step 2: Accelerate decides where each process runs (one CPU, one GPU, or
    # many under `accelerate launch`) and handles mixed precision.
    # -----------------------------------------------------------------------
    accelerator, device, weight_dtype, mixed_precision = make_accelerator(device, args.mixed_precision,
                                                                          compile_models=args.compile)
    base_model = args.base_model
    pipe = load_pipeline(where, device, weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    check_lora_targets(pipe.unet, args.lora_targets)

    # -----------------------------------------------------------------------
    # Step 3: class images, drawn by the base model before it changes.
    # -----------------------------------------------------------------------
    clock = PhaseClock()
    images_by_role = {"instance": instance_images}
    if args.prior_preservation:
        images_by_role["class"], class_captions = [], []
        for prompt, count in zip(args.class_prompt, shares(args.num_class_images, len(args.class_prompt))):
            folder = class_image_folder(args.class_dir, where, prompt, args.resolution)
            with accelerator.main_process_first(), clock.phase("class images"):
                images_by_role["class"] += ensure_class_images(pipe, folder, prompt, count, args.resolution,
                                                               steps=args.steps, guidance=args.guidance, batch_size=4)
            class_captions += [prompt] * count

    # -----------------------------------------------------------------------
    # Step 4: freeze everything, then add the LoRA matrices; only they train.
    # -----------------------------------------------------------------------
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    encoders = Encoders(pipe, images_by_role, {"instance": args.instance_prompt, "class": class_captions},
                        args.flip, args.cache, text_encoder_trains(args) or identifier_trains(args), device,
                        weight_dtype, empty_prompt_share={"instance": empty_prompt_share(args)})
    lora_configs, trainable = add_lora(pipe.unet, pipe.text_encoder, args)
    identifier = add_identifier_embeddings(pipe, args, trainable) if identifier_trains(args) else None
    unet = pipe.unet
    images_per_update = args.train_batch_size * (2 if args.prior_preservation else 1)
    gradient_checkpointing = gradient_checkpointing_needed(args.gradient_checkpointing, device,
                                                           images_per_update, args.resolution)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    parameter_groups = [{"params": [p for name, p in trainable.items() if name != IDENTIFIER_PARAMETER]}]
    if identifier is not None:
        # A learning rate of their own (at the LoRA's 1e-4 these few vectors barely move), and
        # no weight decay, which would pull them toward zero, the "means nothing" they start from.
        parameter_groups.append({"params": [identifier.vectors], "lr": args.identifier_learning_rate,
                                 "weight_decay": 0.0})
    optimizer = adamw(parameter_groups, device, lr=args.learning_rate, weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if text_encoder_trains(args):
        encoders.text_encoder = accelerator.prepare(pipe.text_encoder)  # pipe keeps the bare one to sample
    trained_models = [unet] + ([encoders.text_encoder] if text_encoder_trains(args) else [])

    # One generator draws images, flips, noise and timesteps: saving its state
    # is what makes a resume continue exactly where training stopped.
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    history = {"total": [], "instance": [], "prior": []}
    first_update, elapsed_before = 0, 0.0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, trainable, optimizer, lr_scheduler, generator,
                                accelerator.process_index)
        first_update, history, elapsed_before = state["update"], state["history"], state["seconds"]
        print(f"resuming from {checkpoint} at update {first_update}")
    losses = LossLog(history, args.adapter_dir)

    def save_state(update):
        losses.flush()  # a non-finite loss stops the run here, before its weights are saved
        # Every process saves its own random state; process 0 also the shared rest.
        with clock.phase("checkpoints"):
            save_checkpoint(args.adapter_dir / f"checkpoint-{update}",
                            {name: p for name, p in trainable.items()}, optimizer, lr_scheduler, generator,
                            {"update": update, "history": history, "settings": settings,
                             "seconds": elapsed_before + time.perf_counter() - started},
                            rank=accelerator.process_index)

    def save_progress_grid(update):
        if not accelerator.is_main_process:
            return
        losses.flush()
        with clock.phase("progress grids"), sampling(accelerator, trained_models):
            images = generate(pipe, PROGRESS_PROMPTS, PROGRESS_SEEDS, steps=args.steps, resolution=args.resolution,
                              guidance=args.guidance, batch_size=len(PROGRESS_PROMPTS), desc="progress grid")
        save_figure(labelled_grid(images, PROGRESS_PROMPTS, cols=4, suptitle=f"after {update} updates"),
                    args.output_dir / "training_progress_lora" / f"step_{update:05d}.png")

    # -----------------------------------------------------------------------
    # Step 5: the training loop. One iteration = one optimizer update.
    # -----------------------------------------------------------------------
    started = time.perf_counter()
    first_update_seconds = 0.0
    for model in trained_models:
        model.train()
    update = first_update
    bar = tqdm(range(first_update, args.max_train_steps), initial=first_update, total=args.max_train_steps,
               desc="LoRA updates", disable=not accelerator.is_main_process)
    with clock.phase("training"):
        try:
            for update in bar:
                total, instance, prior = training_step(unet, noise_scheduler, encoders, args.train_batch_size,
                                                       generator, args.prior_preservation, args.prior_loss_weight)
                accelerator.backward(total)
                if identifier is not None and accelerator.num_processes > 1:
                    # The vectors sit outside any model Accelerate wrapped, so their gradients are averaged here.
                    identifier.vectors.grad = accelerator.reduce(identifier.vectors.grad, reduction="mean")
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable.values(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if losses.add(total=total, instance=instance, prior=prior) or update == first_update:
                    losses.flush()  # after the first update too: its time (warm-up, compiling) is reported apart
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
    # Step 6: save the adapter (PEFT and diffusers format) and the pictures.
    # -----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    # The pipeline holds the bare models (no Accelerate, DDP or torch.compile wrapper): their names are the LoRA's.
    lora_states = {"unet": get_peft_model_state_dict(pipe.unet)}
    if text_encoder_trains(args):
        lora_states["text_encoder"] = get_peft_model_state_dict(pipe.text_encoder)
    sizes = save_lora(args.adapter_dir, lora_states, lora_configs, base_model)
    if identifier is not None:
        from common.identifier_embeddings import save_identifier_embeddings

        path = save_identifier_embeddings(args.adapter_dir, pipe.tokenizer, identifier, args.identifier)
        sizes[path.name] = path.stat().st_size
    plot_loss_curves(history, args.output_dir / "exercise3b_loss_curves.png",
                     f"DreamBooth LoRA: {len(history['total'])} optimizer updates")
    summary = {
        "optimizer_updates": len(history["total"]),
        "wall_seconds": round(seconds, 1),
        "seconds_per_update": round(seconds / len(history["total"]), 4),
        "final_smoothed_loss": {name: round(smooth(values)[-1], 5) for name, values in history.items() if values},
        "file_bytes": sizes,
        "lora_layers": sum(1 for state in lora_states.values() for key in state if ".lora_A." in key),
        "text_encoder_lora_layers": sum(1 for key in lora_states.get("text_encoder", {}) if ".lora_A." in key),
        "identifier_token_embeddings": 0 if identifier is None else len(identifier.token_ids),
        "device": device.type,
        "mixed_precision": mixed_precision,
        "frozen_weights_dtype": str(weight_dtype).removeprefix("torch."),
        "gradient_checkpointing": gradient_checkpointing,
        "compiled": args.compile,
        "cached_encoders": args.cache,
        "settings": settings,
    }
    # -----------------------------------------------------------------------
    # Step 7 (micro model only): did the lesson land? The judge compares "sks"
    # pictures with the training images, with and without the token and the LoRA.
    # -----------------------------------------------------------------------
    from micro.judge import JUDGE_FILE

    if args.base_model == MICRO and JUDGE_FILE.is_file():
        from micro.evaluate import subject_report

        with clock.phase("judge report"), sampling(accelerator, trained_models):
            summary["judge"] = subject_report(pipe, instance_images, steps=args.steps, guidance=args.guidance)
        for name, numbers in summary["judge"].items():
            print(f"judge, {name}: similarity to training images {numbers['similarity_to_training_images']}, "
                  f"judged as the subject {numbers['judged_as_subject_family']:.0%}, "
                  f"context right {numbers['context_accuracy']:.0%}")
    summary.update(clock.summary(losses.updates - first_update, first_update_seconds))
    save_json(summary, args.output_dir / "exercise3b_summary.json")
    print(f"wrote {args.adapter_dir} ({summary['lora_layers']} LoRA layers, scale {args.lora_alpha / args.rank}), "
          f"{args.output_dir / 'exercise3b_loss_curves.png'}, {args.output_dir / 'exercise3b_summary.json'}")
    print(clock.describe(losses.updates - first_update, first_update_seconds))


if __name__ == "__main__":
    run_script(main)
