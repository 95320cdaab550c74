"""What the tests share: tiny models in Stable Diffusion's format, and running a script as a student would.

The tiny models share SD 1.5's structure (CLIP tokenizer and text encoder, a
UNet with cross-attention, a KL VAE with 4 latent channels) at a few thousand
times fewer weights, built in seconds, so every code path runs on a CPU
without a download.
"""

import collections
import json
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common.errors import run_script

REPO = Path(__file__).resolve().parent.parent
TINY = ["--steps", "2", "--resolution", "32"]  # sampling flags that keep a script's run to seconds


def run_main(module, args):
    """Run a script's main through the same wrapper as the command line; return its exit code."""
    try:
        run_script(module.main, [str(a) for a in args])
    except SystemExit as stop:
        return stop.code
    return 0


def train_args(tiny_pipeline_dir, instance_dir, tmp_path, *extra):
    """exercise3b's flags for a seconds-long run on the tiny pipeline, everything written under tmp_path."""
    return ["--base-model", tiny_pipeline_dir, "--instance-dir", instance_dir, "--class-dir", tmp_path / "classes",
            "--num-class-images", 3, "--resolution", 32, "--steps", 2, "--adapter-dir", tmp_path / "lora",
            "--output-dir", tmp_path / "out", "--progress-every", 1000, *extra]


def unet_output(pipe, seed=0):
    """The UNet's prediction for a fixed random input: equal outputs mean equal weights in effect."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return pipe.unet(sample, 500, context).sample

TINY_TEXT_WIDTH = 32


class CountingOps(TorchDispatchMode):
    """Counts the aten operations run inside it, by name (on a GPU, each that is not a view is about
    one kernel launch)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def write_tiny_tokenizer(folder):
    """A CLIP tokenizer whose vocabulary is the printable ASCII characters (no merges)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = [chr(code) for code in range(33, 127)]
    vocab = {}
    for piece in characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[piece] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def sd15_unet(cross_attention_dim=768):
    """Stable Diffusion 1.5's UNet architecture (860M weights), random: the real one's speed and memory
    (for bench/; too slow for the tests)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=cross_attention_dim, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)


def tiny_unet(cross_attention_dim=TINY_TEXT_WIDTH, seed=0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


def build_tiny_pipeline(folder, seed=0, text_width=TINY_TEXT_WIDTH):
    """Save a tiny StableDiffusionPipeline to `folder` and return it."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer = write_tiny_tokenizer(folder / "_tokenizer_source")
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=text_width, intermediate_size=2 * text_width, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet(text_width, seed),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def random_lora_state_dict(unet, rank=4, seed=0, prefix="base_model.model."):
    """PEFT-style LoRA weights for every attention projection of `unet`, non-zero so they change outputs."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")) and isinstance(module, torch.nn.Linear):
            state_dict[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.1
            state_dict[f"{prefix}{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.1
    return state_dict


def write_peft_lora(folder, unet, rank=4, alpha=32, seed=0):
    """A PEFT adapter folder like the course release (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = random_lora_state_dict(unet, rank, seed)
    save_file(state_dict, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": ["to_k", "to_q", "to_v", "to_out.0"], "init_lora_weights": "gaussian",
              "base_model_name_or_path": None, "inference_mode": True, "task_type": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def overlapping_texts(figure):
    """Pairs of text boxes in a drawn matplotlib figure that overlap, or texts that leave the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = list(figure.texts) + ([figure._suptitle] if figure._suptitle is not None else [])
    for axis in figure.axes:
        texts += [axis.title, axis._left_title, axis._right_title, axis.xaxis.label, axis.yaxis.label]
        legend = axis.get_legend()
        texts += list(legend.get_texts()) if legend is not None else []
    texts = [text for text in dict.fromkeys(texts) if text.get_visible() and text.get_text().strip()]
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in texts]
    frame = figure.bbox
    problems = [(label, "outside the figure") for label, box in boxes
                if box.x0 < frame.x0 - 1 or box.y0 < frame.y0 - 1 or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1]
    for index, (label, box) in enumerate(boxes):
        for other_label, other in boxes[index + 1:]:
            if box.x0 < other.x1 - 1 and other.x0 < box.x1 - 1 and box.y0 < other.y1 - 1 and other.y0 < box.y1 - 1:
                problems.append((label, other_label))
    return problems


def write_tiny_clip(folder, image_size=32):
    """A tiny random CLIP (text and vision towers, processor) saved as a transformers folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = write_tiny_tokenizer(folder / "_tokenizer_source")
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(**tower, vocab_size=len(tokenizer), max_position_embeddings=77,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
                        vision_config=dict(**tower, image_size=image_size, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_dino(folder, image_size=32):
    """A tiny random ViT without a pooler, saved as DINO's checkpoints are."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       image_size=image_size, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return Path(folder)
