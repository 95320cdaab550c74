"""Exercise 3a: textual inversion, teaching the model one new word and nothing else.

What this teaches
-----------------
Textual inversion (Gal et al. 2022) freezes the whole model, UNet, VAE and
text encoder alike, and learns a single new word vector: the embedding of
the token "<african-fabric>". Training asks: which vector, placed where a
word goes, makes the frozen model draw your images? The answer is one row of
768 numbers (3 KB for SD 1.5). It captures a style well and a precise subject
less well, because the frozen UNet can only draw what it already can.

Which timesteps it trains on matters more than usual here. Trained on the
whole schedule, the one word does best on the loss by drawing the subject's
layout as dark shapes on cream; trained on the noisiest 30% of the schedule,
where a picture's colours and big shapes are settled, it learns the subject's
orange and cream instead (on micro; docs/micro_model.md has the numbers).
SD 1.5 keeps diffusers' whole schedule (`--min-timestep`), and its length:
3,000 updates at 5e-4; micro learns the same word in 1,500 at 1e-3.

Only the new token's vector may change. Instead of training the whole
embedding matrix and restoring the other 49,408 rows after every step (as
diffusers' example does, since AdamW's weight decay touches every row), the
new vector is its own parameter, swapped in where the token appears. No other
row can change, and checkpoints hold 768 numbers instead of the whole matrix.

What to look at
---------------
outputs/training_progress_ti/step_NNNNN.png   4 fixed prompts every 500 updates
outputs/exercise3a_loss_curve.png             raw (faint) and smoothed (bold) loss, and the evaluation
                                              loss on the same noise every time
outputs/exercise3a_summary.json               updates, time of each phase, final loss, file size, settings
models/fabric_textual_inversion/learned_embeds.safetensors    use it with --ti-file
models/fabric_textual_inversion/african-fabric.safetensors    the same word for AUTOMATIC1111 and ComfyUI
                                                              (prompt: african-fabric), and a model card

Run it
------
    python exercise3a_train_textual_inversion.py
    python exercise1_generate.py --lora-dir none --ti-file models/fabric_textual_inversion/learned_embeds.safetensors
"""


import torch

from common import prompts
from common.base_model import TEXTUAL_INVERSION_DEFAULTS, auto_help
from common.cli import add_training_flags, auto_or, make_parser, non_negative_int
from common.errors import UserError, run_script
from common.forward_diffusion import noisy_batch

# ---------------------------------------------------------------------------
# Configuration (the course's settings; each is a flag's default, see --help)
# ---------------------------------------------------------------------------
PLACEHOLDER_TOKEN = prompts.PLACEHOLDER_TOKEN  # "<african-fabric>"
INITIALIZER_TOKEN = "pattern"
# Updates and learning rate: "auto", per base (common/base_model.TEXTUAL_INVERSION_DEFAULTS): diffusers'
# 3,000 at 5e-4 on SD 1.5, 1,500 at 1e-3 on micro.
MAX_TRAIN_STEPS = LEARNING_RATE = "auto"
# Style captions ("a textile in the style of {}"): the token names a look, not an object in the scene.
STYLE_TEMPLATES = prompts.TI_STYLE_TEMPLATES
EVALUATION_PAIRS = 4  # fixed (noise, timestep) pairs per image for the evaluation loss
EMBEDDING_FILE = "learned_embeds.safetensors"
RESUME_SETTINGS = ["base_model", "resolution", "learning_rate", "placeholder_token", "initializer_token",
                   "train_batch_size", "flip", "seed", "min_timestep"]


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0], adapters=False)
    data, _ = add_training_flags(parser, max_train_steps=MAX_TRAIN_STEPS, learning_rate=LEARNING_RATE,
                                 checkpoint_every=500, progress_every=500, weights=f"the embedding ({EMBEDDING_FILE})",
                                 adapter_dir_help="auto: models/micro_trained/fabric_textual_inversion on micro, "
                                                  "models/fabric_textual_inversion on SD 1.5",
                                 auto_means=lambda flag: auto_help(flag, TEXTUAL_INVERSION_DEFAULTS))
    data.add_argument("--placeholder-token", default=PLACEHOLDER_TOKEN, help="the new word to learn")
    data.add_argument("--initializer-token", default=INITIALIZER_TOKEN,
                      help="an existing word whose embedding is the starting point")
    data.add_argument("--min-timestep", type=auto_or(non_negative_int), default="auto",
                      help="train only on timesteps from this one to the schedule's end (its noisy end, where "
                           "colours are settled); " + auto_help("min_timestep"))
    return parser.parse_args(argv)


def add_placeholder_token(pipe, token, initializer):
    """Add `token` to the tokenizer; return (its id, the vector to train, started at the initializer's embedding)."""
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
    return token_id, start.clone()


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

    from common.base_model import resolve_base, resolve_training_defaults
    from common.checkpoints import fingerprint, prepare_run
    from common.device import copy_to_device, pick_device
    from common.evaluation_loss import EvaluationLoss
    from common.latent_cache import LatentCache
    from common.pipeline import load_pipeline, print_banner
    from common.saving import save_json, save_safetensors
    from common.training import adamw, average_gradients_across_processes, make_accelerator
    from common.training_images import load_training_images
    from common.model_card import GRID, last_progress_grid, write_embedding_card
    from common.course_page import write_course_page
    from common.training_run import PhaseClock, TrainingRun
    from common.web_ui_files import embedding_file_name, save_web_ui_embedding

    # -----------------------------------------------------------------------
    # Step 1: check everything a mistake could break before any work starts.
    # -----------------------------------------------------------------------
    device, _ = pick_device(args.device, threads=args.threads)
    args.base_model, where = resolve_base(args, device, role="trained_ti")
    resolve_training_defaults(args)  # what each "auto" flag means for this base
    resolve_training_defaults(args, TEXTUAL_INVERSION_DEFAULTS)
    images = load_training_images(args.instance_dir, args.resolution, alpha_background=args.alpha_background)
    settings = fingerprint(args, RESUME_SETTINGS, num_instance_images=len(images))
    # the web UIs' copy of the word is named after it; a token that makes no file name stops here
    web_ui_file = embedding_file_name(args.placeholder_token)
    checkpoint = prepare_run(args, settings, [EMBEDDING_FILE, web_ui_file, GRID])

    # -----------------------------------------------------------------------
    # Step 2: load the frozen model; add the new word and its one trainable vector.
    # -----------------------------------------------------------------------
    accelerator, device, weight_dtype, mixed_precision = make_accelerator(device, args.mixed_precision)
    pipe = load_pipeline(where, device, weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    print_banner(args.base_model, args.resolution, device, f"mixed precision {mixed_precision}",
                 f"trains the word {args.placeholder_token} (from '{args.initializer_token}'), "
                 f"{args.max_train_steps} updates on timesteps {args.min_timestep}-"
                 f"{pipe.scheduler.config.num_train_timesteps - 1}",
                 f"embedding to {args.adapter_dir}/, pictures to {args.output_dir}/")
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        model.requires_grad_(False)
    token_id, vector = add_placeholder_token(pipe, args.placeholder_token, args.initializer_token)
    vector = torch.nn.Parameter(vector.to(device))
    swap_in_learned_vector(pipe.text_encoder.get_input_embeddings(), token_id, vector)
    latents_of = LatentCache(pipe.vae, {"instance": images}, args.flip, args.cache, device, weight_dtype)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    if args.min_timestep >= noise_scheduler.config.num_train_timesteps:
        raise UserError(f"--min-timestep {args.min_timestep} leaves no timestep to train on: this model's "
                        f"schedule has {noise_scheduler.config.num_train_timesteps} (0 to "
                        f"{noise_scheduler.config.num_train_timesteps - 1})")
    optimizer = adamw([vector], device, lr=args.learning_rate, weight_decay=1e-2)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    # The captions' token ids never change: tokenize the templates once.
    captions = [template.format(args.placeholder_token) for template in STYLE_TEMPLATES]
    caption_ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(device)
    # The evaluation loss asks the same questions each time: the first caption, fixed noise and timesteps.
    evaluation = EvaluationLoss(pipe.vae, noise_scheduler, {"instance": images},
                                lambda role: pipe.text_encoder(caption_ids[:1])[0], pairs_per_image=EVALUATION_PAIRS,
                                device=device, dtype=weight_dtype)

    # -----------------------------------------------------------------------
    # Step 3: the loop. The text encoder must run every update (its input,
    # the new vector, changes); the VAE's latents come from the cache.
    # -----------------------------------------------------------------------
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    run = TrainingRun(args=args, accelerator=accelerator, settings=settings, trainable={"vector": vector},
                      optimizer=optimizer, lr_scheduler=lr_scheduler, generator=generator, loss_names=["total"],
                      checkpoint=checkpoint, clock=PhaseClock(), pipe=pipe, trained_models=[],
                      progress_prompts=[t.format(args.placeholder_token) for t in prompts.TI_PROGRESS_TEMPLATES],
                      progress_seeds=prompts.PROGRESS_SEEDS, progress_folder="training_progress_ti",
                      description="TI updates", evaluation=evaluation)
    with run:
        for _ in run.updates():
            latents = latents_of.draw("instance", args.train_batch_size, generator)
            picks = torch.randint(0, len(STYLE_TEMPLATES), (args.train_batch_size,), generator=generator)
            noisy, timesteps, target = noisy_batch(noise_scheduler, latents, generator, args.min_timestep)
            with accelerator.autocast():
                embeddings = pipe.text_encoder(caption_ids[copy_to_device(picks, device)])[0]
                prediction = pipe.unet(noisy, timesteps, embeddings).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            accelerator.backward(loss)
            average_gradients_across_processes(accelerator, [vector])  # the vector is in no wrapped model
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.record(total=loss)

    # -----------------------------------------------------------------------
    # Step 4: save the word: {token: vector}, loadable by pipe.load_textual_inversion.
    # -----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    path = save_safetensors({args.placeholder_token: vector.detach().float()}, args.adapter_dir / EMBEDDING_FILE)
    figure = run.plot_loss_curves(args.output_dir / "exercise3a_loss_curve.png",
                                  f"Textual inversion: {len(run.history['total'])} optimizer updates")
    summary = {**run.summary(), "file_bytes": {EMBEDDING_FILE: path.stat().st_size}, "token": args.placeholder_token,
               "device": device.type, "mixed_precision": mixed_precision,
               "frozen_weights_dtype": str(weight_dtype).removeprefix("torch."), "cached_latents": args.cache,
               "settings": settings}
    summary_path = save_json(summary, args.output_dir / "exercise3a_summary.json")
    print(f"wrote {path} ({path.stat().st_size} bytes, token {args.placeholder_token}), {figure}, {summary_path}")

    # The same word for AUTOMATIC1111 and ComfyUI, which name it after its file, and a model card.
    save_web_ui_embedding(args.placeholder_token, vector, args.adapter_dir / web_ui_file, overwrite=True)
    card = write_embedding_card(args.adapter_dir, base_model=args.base_model, where=where, args=args, summary=summary,
                                embedding_file=EMBEDDING_FILE, web_ui_file=web_ui_file,
                                grid=last_progress_grid(args.output_dir / "training_progress_ti"))
    print(f"for the web UIs: {args.adapter_dir / web_ui_file}" + (f"; model card {card}" if card else ""))
    write_course_page(args.output_dir)  # outputs/index.html: the course's pictures so far, on one page
    print(run.describe())
    return pipe, vector  # for inspection (the tests check that nothing else changed)


if __name__ == "__main__":
    run_script(main)
