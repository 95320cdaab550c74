"""The embedded micro model: its world, tokenizer, judge and the model itself."""

import json

import numpy as np
import pytest
import torch

from common.base_model import MICRO_FOLDER
from micro import world

needs_model = pytest.mark.skipif(not (MICRO_FOLDER / "model_index.json").is_file(),
                                 reason="models/micro not built yet (python -m micro.pretrain)")


def test_world_is_deterministic_per_seed():
    first, again, other = world.sample(6, seed=3), world.sample(6, seed=3), world.sample(6, seed=4)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    assert first[0][0].shape == (64, 64, 3) and first[0][0].dtype == np.uint8


def test_world_covers_every_family_context_and_style():
    specs = [spec for _, _, spec in world.sample(600, seed=0)]
    assert {s["family"] for s in specs} == set(world.FAMILIES)
    assert {s["context"] for s in specs} == set(world.CONTEXTS)
    assert {s["style"] for s in specs} == set(world.STYLES)
    assert not any(world.held_out(s) for s in specs)  # held-out combinations stay out of pretraining
    assert "stars" not in {s["family"] for s in specs}  # the DreamBooth subject is never in the corpus


def test_families_render_differently():
    rng_seed = 5
    base = {"colours": ("red", "yellow"), "context": "swatch", "style": "plain"}
    renders = {family: world.render({**base, "family": family}, 64, rng_seed) for family in world.FAMILIES}
    for a in world.FAMILIES:
        for b in world.FAMILIES:
            if a < b:
                assert not np.array_equal(renders[a], renders[b]), (a, b)


@needs_model
def test_tokenizer_knows_every_exercise_word_but_sks():
    from transformers import CLIPTokenizer

    from common.prompts import every_prompt

    tokenizer = CLIPTokenizer.from_pretrained(MICRO_FOLDER / "tokenizer")
    assert tokenizer.model_max_length == 77
    for prompt in every_prompt():
        # The TI token is added to the tokenizer by exercise3a itself, so it is left out here.
        for word in prompt.replace("<african-fabric>", "").replace(",", " , ").replace("-", " - ").split():
            pieces = tokenizer.tokenize(word)
            if word == "sks":
                assert len(pieces) > 1  # an unseen word falls back to rare pieces, as in CLIP
            else:
                assert len(pieces) == 1, (word, pieces)


@needs_model
def test_micro_model_generates_real_images():
    from common.generation import generate
    from common.pipeline import load_pipeline

    pipe = load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32)
    images = generate(pipe, ["a dress made of red and yellow zigzag fabric pattern"] * 2, [0, 1], steps=10,
                      resolution=64, guidance=7.5)
    for image in images:
        pixels = np.asarray(image, dtype=np.float32)
        assert image.size == (64, 64)
        assert np.isfinite(pixels).all() and pixels.std() > 10
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))
    sizes = sum(p.stat().st_size for p in MICRO_FOLDER.rglob("*.safetensors"))
    assert sizes <= 30 * 2 ** 20


def test_judge_is_accurate_on_fresh_images():
    from micro.judge import accuracy, load_judge

    scores = accuracy(load_judge(), count=256, seed=999)
    # the issue asks 0.95 of every head (colours: the dominant one); docs/micro_model.md has the 512-image numbers
    for head in ("family", "context", "style", "colours"):
        assert scores[head] >= 0.95, scores


@needs_model
def test_short_dreambooth_run_moves_the_judge_toward_the_subject(tmp_path):
    import exercise3b_train_lora as trainer
    from micro import evaluate
    from tests.helpers import run_main

    args = ["--base-model", "micro", "--adapter-dir", tmp_path / "lora", "--class-dir", tmp_path / "classes",
            "--output-dir", tmp_path / "out", "--num-class-images", 8, "--max-train-steps", 80,
            "--learning-rate", 3e-4, "--steps", 8, "--progress-every", 1000,
            # half the work per update (no class image beside each instance image); the other training
            # tests run with the prior, and what it protects is measured in docs/micro_model.md
            "--no-prior-preservation"]
    assert run_main(trainer, args) == 0
    # what exercise3b's last line tells a student to run
    evaluate.main(["--lora-dir", str(tmp_path / "lora"), "--subject-only", "--steps", "8", "--seeds", "0", "1",
                   "--output", str(tmp_path / "judge.json")])
    judge = json.loads((tmp_path / "judge.json").read_text())["subject"]
    after = judge["lora_with_sks"]["similarity_to_training_images"]
    before = judge["base_with_sks"]["similarity_to_training_images"]
    # this short run clears the margin several times over on the shipped model (a hotter rate loses the
    # contexts and the margin with them); without the prior it also drifts
    # without "sks", which the default run (800 updates at 1e-4, with the prior) does far less
    assert after > before + 0.05, json.dumps(judge)
    by_context = judge["lora_with_sks"]["similarity_by_context"]
    assert set(by_context) == {"swatch", "dress", "wallpaper", "handbag", "vase", "basket", "cushion"}
    assert sum(by_context.values()) / len(by_context) == pytest.approx(after, abs=0.002)
    assert judge["lora_with_sks"]["images"] == len(by_context) * 2  # --seeds 0 1: two pictures per context


@needs_model
def test_shipped_lora_moves_the_identifier_prompt_more_than_the_class_noun_which_stays_at_7_5():
    """The lesson on the shipped adapter, as drift_by_guidance measures it: "sks" moves the pictures toward
    the subject at both guidance scales, the class noun far less, and at the scripts' guidance it stays
    where the base drew it (the numbers are in docs/micro_model.md, "The lesson, measured")."""
    from common.adapters import load_lora
    from common.base_model import REPO
    from common.pipeline import load_pipeline
    from common.training_images import load_training_images
    from micro.evaluate import drift_by_guidance

    pipe = load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_lora(pipe, REPO / "models" / "micro_release" / "fabric_lora")
    report = drift_by_guidance(pipe, load_training_images(REPO / "training_images", 64), seeds=range(8))
    for guidance in (1.0, 7.5):
        moved = {name: row["moved"] for name, row in report[guidance].items()}
        assert moved["identifier"] > 0.15, report
        assert moved["class noun"] < 0.7 * moved["identifier"], report
    # at the scripts' guidance, toward the subject only through "sks"
    moved = {name: row["moved"] for name, row in report[7.5].items()}
    assert -0.2 < moved["class noun"] < 0.08 and -0.2 < moved["class prompt (prior)"] < 0.08, report
    for guidance in (1.0, 7.5):
        assert all(row["moved"] == pytest.approx(row["lora"] - row["base"], abs=0.0015)
                   for row in report[guidance].values())


def test_world_batches_drawn_in_worker_processes_match_inline_ones():
    from functools import partial

    from micro.pretrain import prefetch, world_batch

    draw = partial(world_batch, "vae", size=3, seed=11)
    inline = list(prefetch(draw, range(4), workers=0))
    in_workers = list(prefetch(draw, range(4), workers=2, depth=2))
    assert [specs for _, specs in inline] == [specs for _, specs in in_workers]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(inline, in_workers))
    assert not np.array_equal(inline[0][0], inline[1][0])  # each batch index draws other images


@pytest.fixture(autouse=True)
def fewer_latent_statistics_images(monkeypatch):
    """The VAE stages measure their latents' mean and std on 256 fresh pictures; 32 exercise the same code
    in an eighth of the time (the tests check what is done with the statistics, not their values)."""
    from micro import pretrain

    monkeypatch.setattr(pretrain, "LATENT_STATISTICS_IMAGES", 32)


def _pretrain_args(tmp_path, **changes):
    import argparse

    args = dict(seed=0, vae_batch=2, vae_steps=2, decoder_steps=2, workers=0, work_dir=tmp_path / "work",
                outputs_dir=tmp_path / "outputs")
    return argparse.Namespace(**{**args, **changes})


def argparse_changed(args, **changes):
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


def test_decoder_stage_changes_the_decoder_and_keeps_the_latents(tmp_path):
    from micro import pretrain

    args = _pretrain_args(tmp_path)
    vae = pretrain.train_vae(args, torch.device("cpu"))
    tuned = pretrain.train_decoder(args, torch.device("cpu"))
    before, after = vae.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert (tmp_path / "outputs" / "micro_pretraining_decoder_loss.png").is_file()
    # the shapes stage at its default width trains that decoder further, and the encoder still not
    shapes = pretrain.train_shape_decoder(argparse_changed(args, from_model=None, vae_widen=1, shape_decoder_steps=2,
                                                           shape_decoder_lr=5e-4), torch.device("cpu"))
    reshaped = shapes.state_dict()
    assert all(torch.equal(before[k], reshaped[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(after[k], reshaped[k]) for k in after if k.startswith("decoder."))


def test_v2_vae_stage_trains_the_whole_vae_with_32x32_latents_on_world_and_shapes(tmp_path):
    from micro import pretrain

    args = _pretrain_args(tmp_path, vae2_levels=2, vae2_steps=2, vae2_latent_channels=4,
                          vae2_dir=tmp_path / "v2_vae", overwrite=False)
    vae = pretrain.train_vae2(args, torch.device("cpu"))
    assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 32, 32)
    untrained = pretrain.make_vae(levels=2).state_dict()
    for part in ("encoder.", "decoder."):  # both halves learn
        assert not all(torch.equal(untrained[k], v) for k, v in vae.state_dict().items() if k.startswith(part))
    assert (tmp_path / "outputs" / "micro_pretraining_vae2_loss.png").is_file()
    saved = pretrain.stage_vae(tmp_path / "work" / "vae2")  # as micro.rosettes --vae reads a stage's VAE
    assert saved.config.block_out_channels == (32, 64)
    # the stage keeps the trained weights; the VAE it hands on has its latents' mean folded in
    centred = pretrain.centred_vae(saved, args.seed, torch.device("cpu"))
    for key, value in vae.state_dict().items():  # the mean is measured again: equal up to rounding
        torch.testing.assert_close(centred.state_dict()[key], value, atol=1e-5, rtol=0)
    from diffusers import AutoencoderKL

    from common.errors import UserError

    exported = AutoencoderKL.from_pretrained(tmp_path / "v2_vae")  # --vae2-dir: a diffusers folder
    assert exported.config.scaling_factor != 0.18215  # its own, measured on the world's latents
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in vae.state_dict().items())
    with pytest.raises(UserError, match="overwrite"):  # the finished stage again: it never replaces a VAE unasked
        pretrain.train_vae2(args, torch.device("cpu"))


def test_centred_vae_moves_the_latents_mean_to_zero_and_keeps_every_round_trip():
    from micro import pretrain

    torch.manual_seed(0)
    vae = pretrain.make_vae(levels=2)
    with torch.no_grad():  # an offset such as a trained VAE's, so that there is something to centre
        vae.quant_conv.bias[:4] += torch.tensor([-0.6, -1.7, -2.6, -2.4])
    pixels = pretrain.to_tensor(pretrain.world_batch("latents", 0, 8, 0)[0])
    measured = pretrain.to_tensor(pretrain.world_batch("vae", 10 ** 6, pretrain.LATENT_STATISTICS_IMAGES, 0)[0])  # what centred_vae measures
    with torch.no_grad():
        before_mean = vae.encode(measured).latent_dist.mean.mean((0, 2, 3))
        before = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        pretrain.centred_vae(vae, 0, torch.device("cpu"))
        after_mean = vae.encode(measured).latent_dist.mean.mean((0, 2, 3))
        after = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    assert before_mean.abs().min() > 0.5
    assert after_mean.abs().max() < 1e-3 * before_mean.abs().max()
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)  # the decoder adds back what the encoder took


@pytest.mark.parametrize("levels, latent_channels", [(3, 16), (2, 4)])
def test_v2_unet_stage_trains_on_the_v2_vaes_latents_and_encodes_them_anew_for_another_vae(
        tmp_path, levels, latent_channels):
    from transformers import CLIPTokenizer

    from micro import pretrain

    args = _pretrain_args(tmp_path, vae2_levels=levels, vae2_steps=1, vae2_latent_channels=latent_channels,
                          from_model=None, vae2_dir=None, unet2_cross_attention_16=False,
                          unet2_steps=2, unet_lr=1e-3, unet_batch=2, unet_channels=[32, 32, 32], text_width=32,
                          text_layers=1, unet16_latent_images=4, shape_images=4, shape_share=0.5,
                          schedule_shift=4.0 if levels == 2 else 1.0, offset_noise=0.1 if levels == 2 else 0.0)
    tokenizer = CLIPTokenizer.from_pretrained("models/micro/tokenizer")
    pretrain.train_vae2(args, torch.device("cpu"))
    pretrain.train_unet2(tokenizer, args, torch.device("cpu"))
    size = 64 // 2 ** (levels - 1)
    layout = ([32, 32, 32], pretrain.UNET16_BLOCKS) if levels == 3 else ([16, 32, 32, 32], pretrain.UNET32_CONV_BLOCKS)
    unet, _ = pretrain.load_final([pretrain.make_unet(*layout[:1], 32, layout[1], latent_channels, size),
                                   pretrain.make_text_encoder(tokenizer, 32, 1)], tmp_path / "work" / "unet2")
    assert unet.config.in_channels == unet.config.out_channels == latent_channels  # the VAE's latents
    cache = tmp_path / "work" / "latents-vae2" / "latents.safetensors"
    from safetensors.torch import load_file

    first = load_file(str(cache))["latents"]
    assert first.shape == (4, latent_channels, size, size)
    if levels == 2:  # the layout v2 is heading for: assembled, it loads and draws as any SD folder
        from diffusers import StableDiffusionPipeline

        # unet2-more starts exactly where unet2 ended, and assemble takes it once it has run
        more = argparse_changed(args, unet2_more_steps=1, unet2_more_lr=1e-3, unet2_more_offset_noise=0.2)
        unet2_weights = load_file(str(tmp_path / "work" / "unet2" / "final.safetensors"))
        pretrain.train_unet2_more(tokenizer, more, torch.device("cpu"))
        further = load_file(str(tmp_path / "work" / "unet2-more" / "final.safetensors"))
        assert set(further) == set(unet2_weights)
        moved = torch.cat([(further[key] - unet2_weights[key]).flatten() for key in further])
        assert 0 < moved.norm() < 0.1 * torch.cat([w.flatten() for w in unet2_weights.values()]).norm()
        # each stage trains with its own offset noise, and says so in its settings
        recorded = {stage: json.loads((tmp_path / "work" / stage / "progress.json").read_text())["settings"]
                    for stage in ("unet2", "unet2-more")}
        assert (recorded["unet2"]["offset_noise"], recorded["unet2-more"]["offset_noise"]) == (0.1, 0.2)

        # unet2-attention16 grows cross-attention at 16x16 on unet2-more's model, and assemble takes it
        pretrain.train_unet2_attention16(tokenizer, argparse_changed(more, unet2_attention16_steps=1),
                                         torch.device("cpu"))
        grown = load_file(str(tmp_path / "work" / "unet2-attention16" / "final.safetensors"))
        assert set(further) < set(grown)
        assert all(".attentions." in key for key in set(grown) - set(further))
        assert json.loads((tmp_path / "work" / "unet2-attention16" / "progress.json").read_text()
                          )["settings"]["cross_attention_16"]
        pretrain.assemble(argparse_changed(args, out_dir=tmp_path / "v2", device="cpu"), tokenizer,
                          torch.device("cpu"))
        pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "v2")
        assert pipe.unet.config.sample_size == 32 and list(pipe.vae.config.block_out_channels) == [32, 64]
        assembled = {f"0.{key}": value for key, value in pipe.unet.state_dict().items()}
        assert all(torch.equal(assembled[key], grown[key]) for key in assembled)
        # the shifted schedule the UNet trained with travels in the folder, to every scheduler made from it
        from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

        sd_schedule = DDPMScheduler(**pretrain.SCHEDULE).alphas_cumprod
        for scheduler in (pipe.scheduler, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)):
            torch.testing.assert_close(_snr(scheduler.alphas_cumprod), _snr(sd_schedule) / 4, rtol=1e-4, atol=0)
        image = pipe("a fabric pattern", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
        assert image.shape == (64, 64, 3)
    # another VAE in the vae2 stage's place: the cache is encoded anew, not read back
    other = pretrain.make_vae(levels=levels, latent_channels=latent_channels)
    again, _ = pretrain.cached_latents(other, args, torch.device("cpu"), name="latents-vae2", count=4,
                                       batch=pretrain.world_latents_batch, source="another VAE")
    assert not torch.equal(first, again)
    assert torch.equal(again, load_file(str(cache))["latents"])


def _snr(alphas_cumprod):
    return alphas_cumprod / (1 - alphas_cumprod)


def test_noise_schedule_divides_every_timesteps_snr_by_the_shift_and_is_sds_at_shift_one():
    from diffusers import DDPMScheduler

    from micro.pretrain import SCHEDULE, noise_schedule

    assert noise_schedule(1.0) == SCHEDULE
    sd, shifted = (DDPMScheduler(**schedule).alphas_cumprod for schedule in (SCHEDULE, noise_schedule(3.0)))
    torch.testing.assert_close(_snr(shifted), _snr(sd) / 3, rtol=1e-4, atol=0)
    assert (shifted < sd).all() and (torch.diff(shifted) < 0).all()  # noisier at every step, still decreasing


@pytest.mark.parametrize("flag, value", [("--schedule-shift", "0"), ("--schedule-shift", "-2"),
                                         ("--offset-noise", "-0.1"), ("--offset-noise", "nan")])
def test_pretrain_refuses_a_schedule_shift_or_offset_noise_out_of_range(flag, value, capsys):
    from micro.pretrain import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, value])
    assert flag in capsys.readouterr().err


def test_offset_noise_hides_each_pictures_channel_means_from_the_unet():
    from diffusers import DDPMScheduler

    from micro.pretrain import SCHEDULE, diffusion_loss

    seen = []

    class RecordingUNet(torch.nn.Module):
        def forward(self, noisy, timesteps, states):
            seen.append(noisy / (1 - scheduler.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1))
            return type("Output", (), {"sample": torch.zeros_like(noisy)})

    scheduler = DDPMScheduler(**SCHEDULE)
    tokenizer = lambda captions, **_: type("Ids", (), {"input_ids": torch.zeros(len(captions), 77, dtype=torch.long)})
    text_encoder = lambda ids: (torch.zeros(len(ids), 77, 8),)
    latents = torch.zeros(128, 4, 32, 32)  # clean latents of zero: what the UNet sees is the noise alone
    spreads = []
    for offset in (0.0, 0.1):
        loss_fn = diffusion_loss(RecordingUNet(), text_encoder, tokenizer, scheduler, latents, "cpu", offset)
        loss_fn((torch.arange(128), [""] * 128), 0, torch.Generator().manual_seed(0))
        spreads.append(seen[-1].mean((2, 3)).std().item())
    # without an offset a 32x32 channel's mean varies by 1/32; the offset makes it vary by about 0.1
    assert spreads[0] < 0.045 and 0.08 < spreads[1] < 0.13


def test_pretraining_loop_resumes_exactly_and_refuses_other_settings(tmp_path):
    from common.errors import UserError
    from micro.pretrain import run_stage

    def train(folder, stop_at=None, steps=6):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)

        def loss_fn(batch, update, generator):
            if update == stop_at:
                raise KeyboardInterrupt
            return (model(batch) - torch.randn(4, 2, generator=generator)).pow(2).mean()

        batches = lambda start: (torch.randn(4, 3, generator=torch.Generator().manual_seed(i))  # noqa: E731
                                 for i in range(start, steps))
        return run_stage(folder, [model], steps, 0.1, batches, loss_fn, seed=0, ema_decay=0.9,
                         plot_dir=tmp_path, checkpoint_every=2)

    straight = train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "stopped", stop_at=3)
    assert [p.name for p in (tmp_path / "stopped").glob("checkpoint-*")] == ["checkpoint-2"]
    resumed = train(tmp_path / "stopped")
    assert straight.keys() == resumed.keys() and len(straight) == 2  # the averaged weight and bias
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    with pytest.raises(UserError, match="delete"):
        train(tmp_path / "stopped", steps=8)

    # the newest checkpoint cut short (a kill while writing): the one before it resumes the same training
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", stop_at=5)
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    newest = tmp_path / "cut" / "checkpoint-4" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:-8])
    resumed = train(tmp_path / "cut")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    for checkpoint in (tmp_path / "cut").glob("checkpoint-*"):  # every checkpoint damaged: one line, what to do
        trainable = checkpoint / "trainable.safetensors"
        trainable.write_bytes(trainable.read_bytes()[:-8])
    with pytest.raises(UserError, match="damaged.*delete"):
        train(tmp_path / "cut", steps=6)


def test_lora_sweep_reads_class_prompts_and_tabulates_over_seeds():
    from micro.sweep_lora import SETTINGS, class_prompts_of, tabulate

    assert class_prompts_of(SETTINGS["te-attention-four-contexts"])[1] == "a dress made of african fabric pattern"
    assert len(class_prompts_of(SETTINGS["te-attention-four-contexts"])) == 4
    assert class_prompts_of(["--class-prompt", "a", "--rank", "8"]) == ("a",) and class_prompts_of([]) is None
    results = [("x", 0, {"sim": 0.5}), ("x", 1, {"sim": 0.7}), ("y", 0, {"error": ["boom"]}),
               ("z", 0, {"sim": 0.25})]
    table = tabulate(results)
    assert table["x"] == {"sim": "0.600 ± 0.100", "seeds": 2}
    assert table["z"] == {"sim": "0.250", "seeds": 1} and "y" not in table  # failed runs are left out


def test_every_lora_sweep_setting_is_a_valid_exercise3b_command_line():
    """A misspelled flag in a setting would only fail minutes into a sweep; exercise3b's own parser
    reads every setting here, and the all-layers settings reach the convolutions outside the ResNets."""
    from exercise3b_train_lora import parse_args
    from micro.sweep_lora import ALL_LAYERS, SETTINGS

    for name, flags in SETTINGS.items():
        args = parse_args(["--base-model", "micro", *flags])
        assert args.lora_targets == flags[flags.index("--lora-targets") + 1:][:len(args.lora_targets)], name
    assert {"conv_in", "conv_out", "conv_shortcut"} <= set(parse_args(SETTINGS["unet-all-layers"]).lora_targets)
    assert parse_args(SETTINGS["unet-all-layers-no-prior"]).prior_preservation is False
    # settings spell out the LoRA's shape, so that a change of exercise3b's defaults does not change them
    assert (parse_args(SETTINGS["te-attention"]).rank, parse_args(SETTINGS["te-attention"]).lora_alpha) == (4, 32)
    assert parse_args(SETTINGS["identifier-5e-3-convs-rank16-offset"]).rank == 16
    assert parse_args(SETTINGS["identifier-5e-3-convs-rank16-offset"]).offset_noise == 0.1
    assert len(set(ALL_LAYERS)) == len(ALL_LAYERS)


def test_lora_sweep_refuses_a_keep_runs_folder_that_holds_runs(tmp_path, capsys):
    from micro.sweep_lora import main

    (tmp_path / "earlier-run").mkdir()
    with pytest.raises(SystemExit):
        main(["--keep-runs", str(tmp_path), "--settings", "unet-attention", "--seeds", "0"])
    assert "not empty" in capsys.readouterr().err
