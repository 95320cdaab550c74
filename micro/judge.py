"""The judge: a small classifier of fabric-world images, the micro analogue of CLIP and DINO scores.

It predicts an image's pattern family (the eight of the world plus the
DreamBooth subject's stars), context, style and two pattern colours, and its
penultimate layer gives an embedding: cosine similarity of embeddings plays
the part of the DreamBooth paper's DINO score (subject fidelity), and the
heads' accuracy on generated images plays the part of CLIP-T (prompt fidelity).

Colours are judged only in styles that keep them (plain, photorealistic, oil
painting, watercolor, anime); sepia, neon, line art and psychedelic repaint
the fabric, so there the colour head is neither trained nor scored.

    python -m micro.judge            # train (about 35 minutes on 2 CPU cores, 6 on a GPU) and report accuracy
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from micro import world

REPO = Path(__file__).resolve().parent.parent
JUDGE_FILE = REPO / "models" / "micro_judge" / "judge.safetensors"
JUDGE_FAMILIES = world.FAMILIES + ["stars"]
COLOUR_STYLES = {"plain", "photorealistic", "oil painting", "watercolor", "anime"}


class Judge(nn.Module):
    def __init__(self, width=48):
        super().__init__()
        layers, channels = [], 3
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(channels, 128)
        self.heads = nn.ModuleDict({"family": nn.Linear(128, len(JUDGE_FAMILIES)),
                                    "context": nn.Linear(128, len(world.CONTEXTS)),
                                    "style": nn.Linear(128, len(world.STYLES)),
                                    "colours": nn.Linear(128, len(world.COLOURS))})

    def embedding(self, images):
        """images: [B, 3, 64, 64] in [0, 1] -> [B, 128]."""
        return self.embed(self.features(images).mean((2, 3)))

    def forward(self, images):
        embedding = self.embedding(images)
        hidden = F.silu(embedding)
        return embedding, {name: head(hidden) for name, head in self.heads.items()}


def to_batch(images):
    """uint8 [B, H, W, 3] arrays or PIL images -> float [B, 3, 64, 64] in [0, 1]."""
    from PIL import Image

    arrays = [np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR) if hasattr(image, "resize")
                         and not isinstance(image, np.ndarray) else image) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def labelled_batch(size, rng, subject_share=0.1):
    specs = [world.random_spec(rng, held_out_only=rng.random() < 0.15) for _ in range(size)]
    for spec in specs:
        if rng.random() < subject_share:
            spec["family"] = "stars"
    images = to_batch([world.render(spec, 64, int(rng.integers(2 ** 31))) for spec in specs])
    labels = {"family": torch.tensor([JUDGE_FAMILIES.index(s["family"]) for s in specs]),
              "context": torch.tensor([world.CONTEXTS.index(s["context"]) for s in specs]),
              "style": torch.tensor([world.STYLES.index(s["style"]) for s in specs])}
    colours = torch.zeros(size, len(world.COLOURS))
    for row, spec in enumerate(specs):
        for name in spec["colours"]:
            colours[row, world.COLOURS.index(name)] = 1
    labels["colours"] = colours
    labels["has_colours"] = torch.tensor([s["style"] in COLOUR_STYLES and s["family"] != "stars" for s in specs])
    return images, labels, specs


def losses(outputs, labels):
    total = sum(F.cross_entropy(outputs[name], labels[name]) for name in ("family", "context", "style"))
    mask = labels["has_colours"]
    if mask.any():
        total = total + F.binary_cross_entropy_with_logits(outputs["colours"][mask], labels["colours"][mask])
    return total


def accuracy(judge, count=512, seed=12345):
    """Per-head accuracy on `count` fresh images, where judged for colours:
    'colours' = the top colour is one of the two (the dominant colour is right),
    'both_colours' = the top two are exactly the two."""
    rng = np.random.default_rng(seed)
    correct = {name: 0 for name in ("family", "context", "style", "colours", "both_colours")}
    judged_colours = 0
    judge.eval()
    with torch.no_grad():
        for start in range(0, count, 128):
            images, labels, _ = labelled_batch(min(128, count - start), rng)
            _, outputs = judge(images)
            for name in ("family", "context", "style"):
                correct[name] += (outputs[name].argmax(1) == labels[name]).sum().item()
            mask = labels["has_colours"]
            top2 = outputs["colours"][mask].topk(2, dim=1).indices
            truth = labels["colours"][mask].topk(2, dim=1).indices
            correct["both_colours"] += (top2.sort(1).values == truth.sort(1).values).all(1).sum().item()
            correct["colours"] += labels["colours"][mask].gather(1, top2[:, :1]).sum().item()
            judged_colours += int(mask.sum())
    return {name: correct[name] / (judged_colours if "colours" in name else count) for name in correct}


def labelled_batch_at(index, size, seed):
    """Batch `index` of the judge's training stream: (images, labels, specs), seeded by (seed, index)."""
    return labelled_batch(size, np.random.default_rng([seed, 5, index]))


def train(steps=8000, batch=64, seed=0, device="cpu", workers=0):
    from functools import partial

    from tqdm.auto import tqdm

    from micro.pretrain import prefetch

    torch.manual_seed(seed)
    judge = Judge().to(device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    judge.train()
    batches = prefetch(partial(labelled_batch_at, size=batch, seed=seed), range(steps), workers)
    bar = tqdm(batches, total=steps, desc="judge")
    for images, labels, _ in bar:
        _, outputs = judge(images.to(device))
        loss = losses(outputs, {name: value.to(device) for name, value in labels.items()})
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return judge.cpu().eval()


def load_judge(path=JUDGE_FILE):
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda when available")
    parser.add_argument("--workers", type=int, default=0, help="processes drawing images ahead of training")
    parser.add_argument("--output", type=Path, default=JUDGE_FILE)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing judge at --output")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from common.errors import UserError
    from common.saving import save_safetensors

    if args.output.is_file() and not args.overwrite:
        raise UserError(f"{args.output} exists; pass --overwrite to replace it, or --output to write elsewhere")

    judge = train(args.steps, device=args.device, workers=args.workers)
    save_safetensors(judge.state_dict(), args.output)
    print({name: round(value, 4) for name, value in accuracy(judge).items()})


if __name__ == "__main__":
    from common.errors import run_script

    run_script(main)
