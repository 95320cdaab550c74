"""Exercise 3b: train a DreamBooth LoRA with prior preservation.

What this teaches
-----------------
DreamBooth binds the rare word "sks" to your ten images by training on the
caption "a sks african fabric pattern". Two ideas make it work:

* LoRA. The UNet's attention projections stay frozen; beside each one sits a
  pair of small matrices (B @ A, rank 4) whose product is added to it. Only
  those train: 797k numbers for SD 1.5 instead of 860 million.
* Prior preservation. Every update also trains on images that the untouched
  base model drew for "a fabric pattern". Their loss keeps the class word
  meaning what it meant, so the model learns "sks" without forgetting fabric.

On the micro model the LoRA also adapts the UNet's ResNet convolutions, at
rank 16: its attention reaches only the 8x8 and 4x4 levels, where a rosette
is a pixel or two, and the convolutions are where the shape is drawn. Its
tiny text encoder barely tells "sks" apart from other words, so the
identifier's own token embeddings train too; and the training noise carries
offset noise, as the model's pretraining did (docs/micro_model.md measures
each).

Everything is counted in optimizer updates: 800 updates = 800 weight changes.

What to look at
---------------
outputs/training_progress_lora/step_NNNNN.png   4 fixed prompts and seeds every 100 updates:
                                                 watch "sks" turn into your fabric while
                                                 "a fabric pattern" stays generic
outputs/exercise3b_loss_curves.png               total, instance and prior loss, and the evaluation
                                                 loss (the same noise every time): the instance
                                                 loss falls while the class loss stays
outputs/exercise3b_summary.json                  updates, time of each phase, final losses, sizes, settings
models/fabric_lora/                              the adapter, in PEFT and diffusers format
                                                 (on micro: models/micro_trained/fabric_lora/), with
                                                 fabric_lora_kohya.safetensors for AUTOMATIC1111 and
                                                 ComfyUI, and a model card (README.md)

Run it
------
    python exercise3b_train_lora.py                           # 800 updates, 100 class images
    python exercise3b_train_lora.py --resume latest           # continue after Ctrl-C
    python exercise3b_train_lora.py --train-text-encoder      # a text-encoder LoRA too (diffusers' flag)
    accelerate launch exercise3b_train_lora.py                # several GPUs or machines

Try it: generate "a dress made of african fabric pattern" (no "sks") after
training. If it shows your fabric too, the adapter leaked past the identifier
(language drift). On micro, train once with --no-prior-preservation to see
that happen.
"""

import argparse
from pathlib import Path

import torch

from common import prompts
from common.base_model import MICRO, REPO, SD15, TRAINING_DEFAULTS, auto_help
from common.cli import (add_training_flags, auto_or, make_parser, non_negative_float, positive_float,
                        positive_int, share)
from common.errors import UserError, run_script
from common.forward_diffusion import noisy_batch
from common.prior_preservation import prior_preservation_loss
from common.training import COMPILE_MODES, COMPILE_SCOPES

# ---------------------------------------------------------------------------
# Configuration (the course's table; each value is a flag's default, see --help)
# ---------------------------------------------------------------------------
INSTANCE_PROMPT = prompts.INSTANCE_PROMPT  # "a sks african fabric pattern"
CLASS_PROMPT = prompts.CLASS_PROMPT        # "a fabric pattern"
IDENTIFIER = prompts.IDENTIFIER            # "sks"
MAX_TRAIN_STEPS = 800     # optimizer updates
LEARNING_RATE = 1e-4      # AdamW
NUM_CLASS_IMAGES = 100    # drawn once by the base model for the prior
PRIOR_LOSS_WEIGHT = 1.0   # lambda in total = instance_loss + lambda * prior_loss
# The evaluation loss: the instance images and this many class images, each with this many
# fixed (noise, timestep) pairs (common/evaluation_loss.py).
EVALUATION_CLASS_IMAGES, EVALUATION_PAIRS = 10, 4
# The LoRA's rank, alpha and UNet modules depend on the base (common/base_model.py): on SD 1.5 as
# diffusers' script, rank 4 and alpha 32 (scale alpha / r = 8, as the release's) on the attention
# projections; on micro rank 16 and alpha 128 (the same scale) on those and the ResNet convolutions.
LORA_TARGETS = TRAINING_DEFAULTS[SD15]["lora_targets"]
IDENTIFIER_PARAMETER = "text_encoder.identifier_embeddings"  # its name in checkpoints
# What a run writes into --adapter-dir (text_encoder/ only with --train-text-encoder,
# identifier_embeddings.safetensors only with --train-identifier).
ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json", "pytorch_lora_weights.safetensors",
                 "text_encoder", "identifier_embeddings.safetensors"]
# The flags a resume must share with the run it continues.
RESUME_SETTINGS = ["base_model", "resolution", "rank", "lora_alpha", "lora_targets", "train_text_encoder",
                   "learning_rate", "train_identifier", "identifier", "instance_prompt", "class_prompt",
                   "prior_preservation", "prior_loss_weight", "train_batch_size", "flip", "seed",
                   "proportion_empty_prompts", "offset_noise"]


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0], adapters=False)
    data, train = add_training_flags(parser, max_train_steps=MAX_TRAIN_STEPS, learning_rate=LEARNING_RATE,
                                     checkpoint_every=200, progress_every=100, weights="the LoRA",
                                     adapter_dir_help="auto: models/micro_trained/fabric_lora on micro, "
                                                      "models/fabric_lora on SD 1.5")
    data.add_argument("--instance-prompt", default=INSTANCE_PROMPT, help="caption of every instance image")
    data.add_argument("--class-prompt", nargs="+", default=[CLASS_PROMPT],
                      help="what the base model draws as the prior; several prompts share the class images")
    data.add_argument("--class-dir", type=Path, default=Path("models/class_images"),
                      help="cache of class images (a subfolder per base model, prompt and resolution)")
    data.add_argument("--num-class-images", type=positive_int, default=NUM_CLASS_IMAGES,
                      help="class images for the prior")
    data.add_argument("--prior-preservation", action=argparse.BooleanOptionalAction, default=True,
                      help="each update also trains on as many class images as instance images; "
                           "--no-prior-preservation trains on the instance images alone (to see forgetting)")
    data.add_argument("--prior-loss-weight", type=non_negative_float, default=PRIOR_LOSS_WEIGHT,
                      help="lambda of the prior loss")
    data.add_argument("--proportion-empty-prompts", type=auto_or(share), default="auto",
                      help="share of instance images trained with the empty prompt instead of --instance-prompt "
                           "(diffusers' flag of that name); guidance subtracts what the empty prompt learns, "
                           "which pulls the subject out of prompts without the identifier. "
                           + auto_help("proportion_empty_prompts"))
    train.add_argument("--offset-noise", type=auto_or(non_negative_float), default="auto",
                       help="this times a per-picture, per-channel constant added to the training noise, so "
                            "that a picture's colour is learned from its prompt (for a base pretrained with "
                            "it); " + auto_help("offset_noise"))
    train.add_argument("--rank", type=auto_or(positive_int), default="auto",
                       help="LoRA rank r; " + auto_help("rank"))
    train.add_argument("--lora-alpha", type=auto_or(positive_float), default="auto",
                       help="LoRA alpha; the adapter's scale is alpha / r (32 / 4 = 8, as the release); "
                            + auto_help("lora_alpha"))
    train.add_argument("--lora-targets", nargs="+", default="auto",
                       help="UNet module names the LoRA adapts (PEFT suffix match); conv1 conv2 are the ResNet "
                            "convolutions; " + auto_help("lora_targets"))
    train.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default="auto",
                       help="also train a LoRA in the text encoder's attention, so that the identifier gets "
                            "a meaning of its own; " + auto_help("train_text_encoder") + " (diffusers' default)")
    train.add_argument("--train-identifier", action=argparse.BooleanOptionalAction, default="auto",
                       help="also train the token embeddings of --identifier (pivotal tuning); "
                            + auto_help("train_identifier"))
    train.add_argument("--identifier", default=IDENTIFIER,
                       help="the rare word of --instance-prompt that names your subject")
    train.add_argument("--identifier-learning-rate", type=positive_float, default=5e-3,
                       help="AdamW learning rate of the identifier's token embeddings")
    train.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default="auto",
                       help="recompute the UNet's activations in the backward pass: less GPU memory, "
                            "slower updates; auto: on only for a CUDA GPU too small to train without it")
    train.add_argument("--compile", nargs="?", const="model", default="off", choices=COMPILE_SCOPES,
                       help="compile the trained models (the UNet, and the text encoder where it trains) with "
                            "torch.compile: the first update waits while they compile, to make later ones faster; "
                            "model: each as one graph (--compile alone); blocks: each repeated block on its own, "
                            "quicker to compile (docs/performance.md)")
    train.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                       help="torch.compile's mode with --compile; reduce-overhead adds CUDA graphs, which replay "
                            "an update's kernels without launching each")
    args = parser.parse_args(argv)
    if args.compile_mode != "default" and args.compile == "off":
        parser.error(f"--compile-mode {args.compile_mode} needs --compile")
    if args.identifier not in args.instance_prompt.split():
        parser.error(f"--identifier {args.identifier!r} is not a word of --instance-prompt {args.instance_prompt!r}")
    if args.prior_preservation and args.num_class_images < len(args.class_prompt):
        parser.error(f"--num-class-images {args.num_class_images} is fewer than the "
                     f"{len(args.class_prompt)} class prompts; give each prompt at least one image")
    return args


def training_step(unet, noise_scheduler, examples, batch_size, generator, prior_preservation, prior_loss_weight,
                  offset_noise=0.0):
    """One DreamBooth update's loss: draw images, add noise, predict it, compare.

    Returns (total, instance, prior) losses; prior is None without prior preservation.
    """
    # Instances first, then class images: one UNet pass serves both halves.
    instance_latents, instance_embeddings = examples.draw("instance", batch_size, generator)
    latents, embeddings = [instance_latents], [instance_embeddings]
    if prior_preservation:
        class_latents, class_embeddings = examples.draw("class", batch_size, generator)
        latents.append(class_latents)
        embeddings.append(class_embeddings)
    latents, embeddings = torch.cat(latents), torch.cat(embeddings)
    # Forward diffusion: noise at a random timestep per image; the UNet must predict that noise.
    noisy, timesteps, target = noisy_batch(noise_scheduler, latents, generator, offset_noise=offset_noise)
    prediction = unet(noisy, timesteps, embeddings).sample
    # total = instance_loss + prior_loss_weight * prior_loss
    return prior_preservation_loss(prediction, target, batch_size, prior_loss_weight)


def main(argv=None):
    args = parse_args(argv)
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft.utils import get_peft_model_state_dict

    from common.base_model import resolve_base, resolve_training_defaults
    from common.checkpoints import fingerprint, prepare_run
    from common.class_images import class_image_folder, class_images_for_prompts, ensure_class_images
    from common.device import pick_device
    from common.encoded_examples import EncodedExamples, encode_prompt
    from common.evaluation_loss import EvaluationLoss
    from common.identifier_embeddings import attach, identifier_token_ids, save_identifier_embeddings
    from common.adapters import read_lora
    from common.lora_saving import save_lora
    from common.model_card import GRID, last_progress_grid, write_lora_card
    from common.lora_training import (TEXT_ENCODER_LORA_TARGETS, add_lora, check_lora_targets,
                                      compute_lora_in_autocast_precision)
    from common.pipeline import load_pipeline, print_banner
    from common.saving import save_json
    from common.training import (adamw, average_gradients_across_processes, gradient_checkpointing_needed,
                                 make_accelerator, prepare_trained_model)
    from common.training_images import load_training_images
    from common.course_page import write_course_page
    from common.training_run import PhaseClock, TrainingRun
    from common.web_ui_files import kohya_file_name, save_kohya_lora

    # -----------------------------------------------------------------------
    # Step 1: check everything a mistake could break before any work starts.
    # -----------------------------------------------------------------------
    device, _ = pick_device(args.device, threads=args.threads)
    args.base_model, where = resolve_base(args, device, role="trained_lora")
    resolve_training_defaults(args)  # what each "auto" flag means for this base
    instance_images = load_training_images(args.instance_dir, args.resolution, alpha_background=args.alpha_background)
    settings = fingerprint(args, RESUME_SETTINGS, num_instance_images=len(instance_images),
                           identifier_learning_rate=args.identifier_learning_rate if args.train_identifier else None,
                           num_class_images=args.num_class_images if args.prior_preservation else 0)
    # the web UIs' single file and the card's copy of the last grid are the run's too
    checkpoint = prepare_run(args, settings, ADAPTER_FILES + [kohya_file_name(args.adapter_dir), GRID])

    # -----------------------------------------------------------------------
    # Step 2: Accelerate decides where each process runs (one CPU, one GPU, or
    # many under `accelerate launch`) and handles mixed precision.
    # -----------------------------------------------------------------------
    accelerator, device, weight_dtype, mixed_precision = make_accelerator(device, args.mixed_precision,
                                                                          args.compile, args.compile_mode)
    pipe = load_pipeline(where, device, weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    check_lora_targets(pipe.unet, args.lora_targets, suggestion=LORA_TARGETS)
    trains = [f"LoRA rank {args.rank} on the UNet's {' '.join(args.lora_targets)}"]
    if args.train_text_encoder:
        trains.append("the text encoder's attention")
    if args.train_identifier:
        trains.append(f"'{args.identifier}'")
    print_banner(args.base_model, args.resolution, device, f"mixed precision {mixed_precision}",
                 f"trains {' + '.join(trains)}, {args.max_train_steps} updates",
                 f"adapter to {args.adapter_dir}/, pictures to {args.output_dir}/")

    # -----------------------------------------------------------------------
    # Step 3: class images, drawn by the base model before it changes.
    # -----------------------------------------------------------------------
    clock = PhaseClock()
    images_by_role, captions_by_role = {"instance": instance_images}, {"instance": args.instance_prompt}

    def folder_of(prompt):
        return class_image_folder(args.class_dir, where, prompt, args.resolution, steps=args.steps,
                                  guidance=args.guidance)

    with accelerator.main_process_first(), clock.phase("class images"):
        if args.prior_preservation:
            images_by_role["class"], captions_by_role["class"] = class_images_for_prompts(
                pipe, folder_of, args.class_prompt, args.num_class_images, args.resolution, steps=args.steps,
                guidance=args.guidance)
        # The evaluation loss watches the class prompt with or without prior preservation: without
        # it, its curve shows the class drifting. The first class prompt's first images (where the
        # prior drew them already, they are read back).
        count = min(EVALUATION_CLASS_IMAGES, args.num_class_images) if args.prior_preservation else EVALUATION_CLASS_IMAGES
        evaluation_class_images = ensure_class_images(pipe, folder_of(args.class_prompt[0]), args.class_prompt[0], count,
                                                      args.resolution, steps=args.steps, guidance=args.guidance)

    # -----------------------------------------------------------------------
    # Step 4: freeze everything, then add the LoRA matrices; only they train.
    # -----------------------------------------------------------------------
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    examples = EncodedExamples(pipe, images_by_role=images_by_role, captions_by_role=captions_by_role,
                               flip=args.flip, cache=args.cache,
                               text_encoder_trains=args.train_text_encoder or args.train_identifier,
                               device=device, dtype=weight_dtype,
                               empty_prompt_share={"instance": args.proportion_empty_prompts})
    lora_models = {"unet": (pipe.unet, args.lora_targets)}
    if args.train_text_encoder:
        lora_models["text_encoder"] = (pipe.text_encoder, TEXT_ENCODER_LORA_TARGETS)
    lora_configs, trainable = add_lora(lora_models, rank=args.rank, alpha=args.lora_alpha, seed=args.seed)
    parameter_groups = [{"params": list(trainable.values())}]
    identifier = None
    if args.train_identifier:
        identifier = attach(pipe.text_encoder, identifier_token_ids(pipe.tokenizer, args.identifier))
        trainable[IDENTIFIER_PARAMETER] = identifier.vectors
        # A learning rate of their own (at the LoRA's these few vectors barely move), and no
        # weight decay, which would pull them toward zero, the "means nothing" they start from.
        parameter_groups.append({"params": [identifier.vectors], "lr": args.identifier_learning_rate,
                                 "weight_decay": 0.0})
    images_per_update = args.train_batch_size * (2 if args.prior_preservation else 1)
    gradient_checkpointing = gradient_checkpointing_needed(args.gradient_checkpointing, device,
                                                           images_per_update, args.resolution, weight_dtype)
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if args.compile == "blocks" and args.compile_mode == "reduce-overhead":
            # Each ResNet block is then checkpointed as a whole, around its compiled graph, and CUDA graphs
            # recorded inside a checkpoint fail (PyTorch issue 154306); the blocks compile without them.
            print("note: --gradient-checkpointing with --compile blocks: compiling without CUDA graphs "
                  "(--compile-mode default)")
            args.compile_mode = "default"
    optimizer = adamw(parameter_groups, device, lr=args.learning_rate, weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = prepare_trained_model(accelerator, pipe.unet, args.compile, args.compile_mode)
    if args.train_text_encoder:  # trains through Accelerate's wrapper; the pipeline samples with the bare one
        examples.text_encoder = prepare_trained_model(accelerator, pipe.text_encoder, args.compile, args.compile_mode)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    if accelerator.native_amp:  # mixed precision: training and the progress grids run under autocast
        compute_lora_in_autocast_precision(model for model, _ in lora_models.values())

    # The same questions at every evaluation: fixed noise and timesteps on fixed images.
    evaluation_captions = {"instance": args.instance_prompt, "class": args.class_prompt[0]}
    evaluation = EvaluationLoss(pipe.vae, noise_scheduler, {"instance": instance_images,
                                                            "class": evaluation_class_images},
                                lambda role: encode_prompt(pipe, evaluation_captions[role], device),
                                pairs_per_image=EVALUATION_PAIRS, device=device, dtype=weight_dtype)

    # -----------------------------------------------------------------------
    # Step 5: the training loop. One iteration = one optimizer update. One
    # generator draws images, flips, noise and timesteps: saving its state is
    # what makes a resume continue exactly where training stopped.
    # -----------------------------------------------------------------------
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    run = TrainingRun(args=args, accelerator=accelerator, settings=settings, trainable=trainable,
                      optimizer=optimizer, lr_scheduler=lr_scheduler, generator=generator,
                      loss_names=["total", "instance", "prior"], checkpoint=checkpoint, clock=clock, pipe=pipe,
                      trained_models=[unet] + ([examples.text_encoder] if args.train_text_encoder else []),
                      progress_prompts=prompts.LORA_PROGRESS_PROMPTS, progress_seeds=prompts.PROGRESS_SEEDS,
                      progress_folder="training_progress_lora", description="LoRA updates", evaluation=evaluation)
    with run:
        for _ in run.updates():
            total, instance, prior = training_step(unet, noise_scheduler, examples, args.train_batch_size, generator,
                                                   args.prior_preservation, args.prior_loss_weight, args.offset_noise)
            accelerator.backward(total)
            if identifier is not None:  # its vectors are in no model Accelerate wrapped
                average_gradients_across_processes(accelerator, [identifier.vectors])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable.values(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.record(total=total, instance=instance, prior=prior)

    # -----------------------------------------------------------------------
    # Step 6: save the adapter (PEFT and diffusers format) and the pictures.
    # -----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    # The pipeline holds the bare models (no Accelerate, DDP or torch.compile wrapper): their names are the LoRA's.
    lora_states = {role: get_peft_model_state_dict(model) for role, (model, _) in lora_models.items()}
    sizes = save_lora(args.adapter_dir, lora_states, lora_configs, args.base_model)
    if identifier is not None:
        path = save_identifier_embeddings(args.adapter_dir, pipe.tokenizer, identifier, args.identifier)
        sizes[path.name] = path.stat().st_size
    figure = run.plot_loss_curves(args.output_dir / "exercise3b_loss_curves.png",
                                  f"DreamBooth LoRA: {len(run.history['total'])} optimizer updates")
    summary = {**run.summary(), "file_bytes": sizes,
               "lora_layers": sum(1 for state in lora_states.values() for key in state if ".lora_A." in key),
               "text_encoder_lora_layers": sum(1 for key in lora_states.get("text_encoder", {}) if ".lora_A." in key),
               "identifier_token_embeddings": 0 if identifier is None else len(identifier.token_ids),
               "device": device.type, "mixed_precision": mixed_precision,
               "frozen_weights_dtype": str(weight_dtype).removeprefix("torch."),
               "gradient_checkpointing": gradient_checkpointing, "compile": args.compile,
               "compile_mode": args.compile_mode if args.compile != "off" else None,
               "cached_encoders": args.cache, "settings": settings}
    summary_path = save_json(summary, args.output_dir / "exercise3b_summary.json")
    print(f"wrote {args.adapter_dir} ({summary['lora_layers']} LoRA layers, scale {args.lora_alpha / args.rank}), "
          f"{figure}, {summary_path}")

    # -----------------------------------------------------------------------
    # Step 7: the same LoRA for other tools. AUTOMATIC1111 and ComfyUI read one
    # file in kohya's layout (converted from the files just written, at the
    # trained scale), and every adapter folder gets a model card.
    # -----------------------------------------------------------------------
    kohya_name = kohya_file_name(args.adapter_dir)
    try:
        layers = save_kohya_lora(read_lora(args.adapter_dir), args.adapter_dir / kohya_name, overwrite=True)
        no_web_ui_file = None
    except UserError as reason:
        # Layers outside the UNet's blocks (conv_in, conv_out, the time embedding) have no place in
        # kohya's layout. The adapter itself is written and loads in diffusers, so the run still succeeds.
        kohya_name, layers, no_web_ui_file = None, None, str(reason)
    card = write_lora_card(args.adapter_dir, base_model=args.base_model, where=where, args=args, summary=summary,
                           kohya_name=kohya_name, layers=layers, no_web_ui_file=no_web_ui_file,
                           identifier_file="identifier_embeddings.safetensors" if identifier is not None else None,
                           grid=last_progress_grid(args.output_dir / "training_progress_lora"))
    if kohya_name:
        print(f"for the web UIs: {args.adapter_dir / kohya_name}"
              + (" (the identifier's trained embeddings are not in that layout)" if identifier is not None else "")
              + (f"; model card {card}" if card else ""))
    else:
        print(f"no file for the web UIs: {no_web_ui_file}" + (f"; model card {card}" if card else ""))
    write_course_page(args.output_dir)  # outputs/index.html: the course's pictures so far, on one page
    print(run.describe())
    if args.base_model == MICRO and (REPO / "models" / "micro_judge").is_dir():
        print(f"measure what it learned: python -m micro.evaluate --lora-dir {args.adapter_dir} --subject-only")


if __name__ == "__main__":
    run_script(main)
