"""Benchmark: what the micro model's pretraining costs on this machine, stage by stage.

Times a few updates of every stage of `python -m micro.pretrain` (and of the
judge) at their default sizes, in a scratch folder, and multiplies by the
default number of updates: the estimate of a full run from scratch here. The
first updates of each stage (warm-up) are not counted.

    python bench/bench_micro_pretraining.py          # about 5 minutes on 2 cores
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from micro import pretrain  # noqa: E402
from micro import judge as judge_module  # noqa: E402


def seconds_per_call(function, calls, warmup=2):
    for _ in range(warmup):
        function()
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--updates", type=int, default=8, help="timed updates per stage")
    args = parser.parse_args()
    from transformers import CLIPTokenizer

    from common.pipeline import quiet_libraries

    quiet_libraries()
    defaults = pretrain.build_parser().parse_args([])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(vars(defaults), work_dir=Path(tmp), outputs_dir=Path(tmp), workers=0, device="cpu")
        cpu = torch.device("cpu")
        from micro.tokenizer import build_tokenizer

        build_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer")

        def stage_rate(stage, steps_name):
            # a short stage: its time per update, warm-up included (a slight overestimate)
            run = argparse.Namespace(**{**settings, steps_name: 2 + args.updates})
            started = time.perf_counter()
            result = stage(run)
            return (time.perf_counter() - started) / (2 + args.updates), result

        # (name, seconds per update, updates, whether `--stage all` runs it)
        vae_rate, vae = stage_rate(lambda run: pretrain.train_vae(run, cpu), "vae_steps")
        rows.append(("vae", vae_rate, defaults.vae_steps, True))
        chunk = 256
        with torch.no_grad():
            encode = seconds_per_call(lambda: vae.encode(pretrain.to_tensor(
                pretrain.world_batch("latents", 0, chunk, 0)[0])), 2, warmup=1)
        rows.append(("encode the world (per 256 images)", encode, defaults.latent_images / chunk, True))
        scale_run = argparse.Namespace(**{**settings, "latent_images": 512, "unet_steps": 2 + args.updates})
        started = time.perf_counter()
        pretrain.train_unet(vae, tokenizer, scale_run, cpu)
        # the 512 images encoded here are counted above, so take their time off
        unet_rate = (time.perf_counter() - started - 2 * encode) / (2 + args.updates)
        rows.append(("unet + text encoder", unet_rate, defaults.unet_steps, True))
        vae2_rate, vae2 = stage_rate(lambda run: pretrain.train_vae2(run, cpu), "vae2_steps")
        rows.append(("vae2 (v2: 32x32 latents)", vae2_rate, defaults.vae2_steps, True))
        with torch.no_grad():
            encode2 = seconds_per_call(lambda: vae2.encode(pretrain.to_tensor(
                pretrain.world_batch("latents", 0, chunk, 0)[0])), 2, warmup=1)
        images2 = defaults.unet16_latent_images + defaults.shape_images
        rows.append(("encode v2's world and shapes (per 256)", encode2, images2 / chunk, True))
        v2_run = argparse.Namespace(**{**settings, "unet16_latent_images": 512, "shape_images": 256,
                                       "unet2_steps": 2 + args.updates, "unet16_steps": 2 + args.updates})
        started = time.perf_counter()
        pretrain.train_unet2(tokenizer, v2_run, cpu)
        unet2_rate = (time.perf_counter() - started - 3 * encode2) / (2 + args.updates)
        rows.append(("unet2 (v2's UNet)", unet2_rate, defaults.unet2_steps, True))
        # from unet2's final weights just written, on the latents it cached: no encoding to take off
        more_run = argparse.Namespace(**{**vars(v2_run), "unet2_more_steps": 2 + args.updates})
        started = time.perf_counter()
        pretrain.train_unet2_more(tokenizer, more_run, cpu)
        rows.append(("unet2-more (offset noise)", (time.perf_counter() - started) / (2 + args.updates),
                     defaults.unet2_more_steps, True))
        # unet2-more's model with cross-attention grown at 16x16, on the same cached latents
        grow_run = argparse.Namespace(**{**vars(more_run), "unet2_attention16_steps": 2 + args.updates})
        started = time.perf_counter()
        pretrain.train_unet2_attention16(tokenizer, grow_run, cpu)
        rows.append(("unet2-attention16 (attention at 16x16)", (time.perf_counter() - started) / (2 + args.updates),
                     defaults.unet2_attention16_steps, True))
        # the measured experiments, run by name only
        decoder_rate, _ = stage_rate(lambda run: pretrain.train_decoder(run, cpu), "decoder_steps")
        rows.append(("decoder (experiment)", decoder_rate, defaults.decoder_steps, False))
        shapes_rate, _ = stage_rate(lambda run: pretrain.train_shape_decoder(run, cpu), "shape_decoder_steps")
        rows.append(("shapes (experiment)", shapes_rate, defaults.shape_decoder_steps, False))
        started = time.perf_counter()
        pretrain.train_unet16(tokenizer, v2_run, cpu)
        unet16_rate = (time.perf_counter() - started - 3 * encode) / (2 + args.updates)
        rows.append(("unet16 (experiment)", unet16_rate, defaults.unet16_steps, False))
        model = judge_module.Judge()
        optimizer = torch.optim.AdamW(model.parameters())
        rng = np.random.default_rng(0)

        def judge_update():
            images, labels, _ = judge_module.labelled_batch(64, rng)
            judge_module.losses(model(images)[1], labels).backward()
            optimizer.step()
            optimizer.zero_grad()

        rows.append(("judge (python -m micro.judge)", seconds_per_call(judge_update, args.updates),
                     judge_module.build_parser().parse_args([]).steps, False))
    total = 0.0
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'stage':38s} {'s/update':>9s} {'updates':>8s} {'estimate':>10s}")
    for name, rate, count, in_all in rows:
        estimate = rate * count
        if in_all:
            total += estimate
        print(f"{name:38s} {rate:9.3f} {count:8.0f} {estimate / 60:8.1f} min")
    print(f"{'model (python -m micro.pretrain: all)':38s} {'':9s} {'':8s} {total / 60:8.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
