"""A judge-free measure of the subject's shape: counting orange eight-pointed rosettes with cream centres.

The judge (micro/judge.py) learned its families from clean renders. On a
model's blurry pictures it reads colour as much as shape: teal and orange
blobs can pass for the subject's stars. This detector knows nothing but the
subject's geometry, so it cannot be fooled that way, and a reader can check
each rule against a picture:

    a rosette is an orange ring around a centre that is not orange (the cream
    centre), whose rim has eight points (the rim's angular spectrum peaks at
    eight: strong there, and weaker at every count from 3 to 12 but 8, so that
    a square, a six- or a ten-pointed star do not pass), with little orange
    just outside it (rosettes stand apart on the cream ground).

Each rule is a ring filter: the orange map is sampled on a circle around every
pixel, at every size searched, by one convolution per ring. A picture shows
the subject's pattern when at least `MIN_ROSETTES` rosettes are found in it:
one chance rosette is not a pattern.

    python -m micro.rosettes     # the calibration table: held-out positives and negatives (docs/micro_model.md)
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from micro import world

ORANGE = np.array(world.SUBJECT["colours"][1], np.float32)
# How far (RGB distance, 0-255 channels) a colour may be from the subject's orange and still count as
# orange, fading linearly to zero; the world's yellow and red are just outside.
ORANGE_TOLERANCE = 110.0
# Tip radii searched, in pixels of a 64 px picture (the subject's own is 7.2 px: 0.396 of its cell).
RADII = (5.5, 6.25, 7.0, 7.75, 8.5)
# The rules, on ring means of the orange map (0-1) and angular harmonics of the ring through the points.
RULES = {"body": 0.55, "centre": 0.45, "outside": 0.40, "points": 0.06, "four_fold": 0.6, "rivals": 0.4}
MIN_ROSETTES = 2
UPSAMPLE = 2


def orange_map(images):
    """uint8 [B, H, W, 3] -> float [B, 1, H, W]: 1 at the subject's orange, 0 beyond ORANGE_TOLERANCE."""
    pixels = torch.from_numpy(np.asarray(images, np.float32))
    distance = (pixels - torch.from_numpy(ORANGE)).norm(dim=-1)
    return (1 - distance / ORANGE_TOLERANCE).clamp(min=0)[:, None]


def _ring_kernel(radius, harmonic, size):
    """A (size x size) complex kernel whose correlation with an image is the mean of
    image(p + radius * e^{i theta}) * e^{-i harmonic theta} over the circle (bilinear sampling)."""
    count = max(32, int(math.ceil(4 * math.pi * radius)))
    kernel = np.zeros((size, size), np.complex64)
    middle = size // 2
    for theta in np.arange(count) * 2 * math.pi / count:
        x, y = middle + radius * math.cos(theta), middle + radius * math.sin(theta)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        weight = np.exp(-1j * harmonic * theta) / count
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            kernel[y0 + dy, x0 + dx] += w * weight
    return kernel


def _centre_kernel(radius, size):
    v, u = np.mgrid[0:size, 0:size] - size // 2
    kernel = np.exp(-(u ** 2 + v ** 2) / (2 * max(0.6, 0.12 * radius) ** 2))
    return (kernel / kernel.sum()).astype(np.complex64)


RIVAL_HARMONICS = (4, 3, 5, 6, 7, 9, 10, 11, 12)


def _kernels(radius):
    """[4 + 2 * (1 + len(RIVAL_HARMONICS)), 1, k, k] real kernels: the centre, the body ring, the outside
    ring and the point ring's mean; then the point ring's 8th harmonic and each rival harmonic, as
    real and imaginary parts."""
    size = 2 * int(math.ceil(1.4 * radius)) + 3
    means = [_centre_kernel(radius, size), _ring_kernel(0.55 * radius, 0, size),
             _ring_kernel(1.35 * radius, 0, size), _ring_kernel(0.88 * radius, 0, size)]
    harmonics = [_ring_kernel(0.88 * radius, m, size) for m in (8, *RIVAL_HARMONICS)]
    parts = [ring.real for ring in means] + [part for ring in harmonics for part in (ring.real, ring.imag)]
    return torch.from_numpy(np.stack(parts)[:, None].astype(np.float32))


_KERNELS = {}


def rosette_maps(images):
    """For each searched radius, the rule features at every pixel: {name: [B, len(RADII), H, W]}."""
    # Searched at half-pixel steps: sampled half a pixel off its centre, a star's rim leaks its
    # eighth harmonic into the seventh and ninth, which would then look like a rival count.
    orange = F.interpolate(orange_map(images), scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)
    features = {name: [] for name in ("centre", "body", "outside", "ring", "points", "four_fold", "rivals")}
    for radius in RADII:
        kernel = _KERNELS.setdefault(radius, _kernels(radius * UPSAMPLE))
        pad = kernel.shape[-1] // 2
        out = F.conv2d(F.pad(orange, (pad,) * 4, mode="constant", value=0.0), kernel)
        for index, name in enumerate(("centre", "body", "outside", "ring")):
            features[name].append(out[:, index])
        magnitudes = torch.hypot(out[:, 4::2], out[:, 5::2])
        features["points"].append(magnitudes[:, 0])
        features["four_fold"].append(magnitudes[:, 1])
        features["rivals"].append(magnitudes[:, 2:].amax(1))
    return {name: torch.stack(values, 1) for name, values in features.items()}


def find_rosettes(images, rules=RULES):
    """[[(x, y, radius, strength), ...] per picture]: the rosettes found, strongest first.

    A pixel and radius pass when every rule holds; passing pixels closer than a
    radius to a stronger one are the same rosette. Pixels whose outer ring would
    leave the picture are not searched (a rosette cut by the edge is not counted)."""
    images = np.asarray(images)
    maps = rosette_maps(images)
    passing = ((maps["body"] >= rules["body"]) & (maps["centre"] <= rules["centre"])
               & (maps["outside"] <= rules["outside"]) & (maps["points"] >= rules["points"])
               & (maps["four_fold"] <= rules["four_fold"] * maps["points"])
               & (maps["rivals"] <= rules["rivals"] * maps["points"]))
    strength = torch.where(passing, maps["points"], torch.zeros(()))
    height, width = images.shape[1:3]
    found = []
    for picture in range(len(images)):
        best, radius_index = strength[picture].max(0)
        candidates = []
        for row, col in torch.nonzero(best > 0).tolist():
            radius = RADII[radius_index[row, col]]
            # the upsampled grid's pixel (row, col) lies at this position of the picture's own pixels
            x, y = (col + 0.5) / UPSAMPLE - 0.5, (row + 0.5) / UPSAMPLE - 0.5
            if radius <= x < width - 1 - radius and radius <= y < height - 1 - radius:
                candidates.append((float(best[row, col]), x, y, radius))
        kept = []
        for value, x, y, radius in sorted(candidates, reverse=True):
            if all((x - kx) ** 2 + (y - ky) ** 2 > max(radius, kr) ** 2 for kx, ky, kr, _ in kept):
                kept.append((x, y, radius, round(value, 4)))
        found.append(kept)
    return found


def count_rosettes(images):
    """Rosettes found in each picture (uint8 [B, H, W, 3] arrays or PIL images at 64 px)."""
    return [len(found) for found in find_rosettes(_pixels(images))]


def shows_subject_pattern(images, min_rosettes=MIN_ROSETTES):
    """[bool per picture]: at least `min_rosettes` rosettes found."""
    return [count >= min_rosettes for count in count_rosettes(images)]


def _pixels(images):
    from PIL import Image

    arrays = []
    for image in images:
        if not isinstance(image, np.ndarray):
            image = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
                               if image.size != (64, 64) else image.convert("RGB"))
        arrays.append(image)
    return np.stack(arrays)


# --- calibration: held-out positives and negatives, each drawn from seeds no training ever used ---

SUBJECT_SPEC = {"family": "stars", "colours": None, "context": "swatch", "style": "plain"}
CALIBRATION_SEED = 70000


def subject_swatch(seed, size=64, render_size=512):
    """(uint8 [size, size, 3], true rosette centres [(x, y)]): the subject as the training images are made
    (drawn at 512 px, read at 64), at a seed of its own."""
    from PIL import Image

    pixels = world.render(SUBJECT_SPEC, render_size, seed)
    offset = np.random.default_rng(seed).uniform(0, 1, 2)  # render()'s first draw: the lattice's offset
    image = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC))
    pixel = size / render_size
    centres = []
    for row in range(-1, 5):
        for col in range(-1, 5):
            u, v = (col + 0.5) / world.STAR_REPEATS - offset[0], (row + 0.5) / world.STAR_REPEATS - offset[1]
            centres.append((u * size - 0.5 + pixel / 2, v * size - 0.5 + pixel / 2))
    return image, centres


def blurred(images, sigma=0.7, noise=3.0, seed=0):
    """A mild Gaussian blur and a little pixel noise: what a model's picture adds to a clean one."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = [np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)), np.float32)
           for image in images]
    return np.stack([np.clip(image + rng.normal(0, noise, image.shape), 0, 255).round().astype(np.uint8)
                     for image in out])


def round_trip(images, vae):
    """The pictures encoded by `vae` (the posterior mean) and decoded again."""
    pixels = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    return ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _subject_coloured(mask_shape, accent, rng, size):
    from micro.shapes import shape_texture

    cream, teal, orange = world.SUBJECT["background"], *world.SUBJECT["colours"]
    spec = {**mask_shape, "repeats": world.STAR_REPEATS, "colours": (cream, orange, teal),
            "accent": 0.122 if accent else 0.0, "rotation": mask_shape.get("rotation", 0.0)}
    return (np.clip(shape_texture(spec, size, rng), 0, 1) * 255).round().astype(np.uint8)


def _low_pass_noise(rng, size, sigma):
    """White noise blurred by a Gaussian of `sigma` pixels (through the FFT), scaled to unit spread."""
    frequency = np.fft.fftfreq(size)
    gain = np.exp(-2 * (math.pi * sigma) ** 2 * (frequency[:, None] ** 2 + frequency[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * gain).real
    return (field - field.mean()) / field.std()


def negative_sets(count, seed=CALIBRATION_SEED, size=64):
    """{name: uint8 [count, size, size, 3]}: pictures that are not the subject, most in its own colours."""
    cream, teal, orange = (np.array(c, np.float32) for c in (world.SUBJECT["background"], *world.SUBJECT["colours"]))
    sets = {}
    rng = np.random.default_rng([seed, 1])
    blobs = []
    for _ in range(count):
        field = _low_pass_noise(rng, size, rng.uniform(1.5, 4.0))
        accent = _low_pass_noise(rng, size, rng.uniform(0.8, 2.0))
        image = np.where((field > rng.uniform(-0.3, 0.6))[..., None], orange, cream)
        image = np.where((accent > 1.6)[..., None], teal, image)
        blobs.append(image.round().astype(np.uint8))
    sets["blobs in the subject's colours"] = np.stack(blobs)
    rng = np.random.default_rng([seed, 2])
    families = []
    for index in range(count):
        family = world.FAMILIES[index % len(world.FAMILIES)]
        texture = world.fabric_texture(family, [tuple(teal), tuple(orange)], size, rng, background=tuple(cream))
        if rng.random() < 0.5:  # the subject's teal dots between the shapes
            v, u = np.mgrid[0:size, 0:size] / size
            du, dv = (u * world.STAR_REPEATS + rng.random()) % 1 - 0.5, (v * world.STAR_REPEATS + rng.random()) % 1 - 0.5
            texture = np.where((du ** 2 + dv ** 2 < 0.015)[..., None], teal / 255, texture)
        families.append((np.clip(texture, 0, 1) * 255).round().astype(np.uint8))
    sets["the eight families in orange on cream"] = np.stack(families)
    rng = np.random.default_rng([seed, 3])
    discs = [_subject_coloured({"points": 0, "outer": rng.uniform(0.28, 0.42), "inner": 0.0,
                                "hollow": rng.choice([0.0, rng.uniform(0.08, 0.14)])}, rng.random() < 0.7, rng, size)
             for _ in range(count)]
    sets["discs and rings in the subject's layout"] = np.stack(discs)
    rng = np.random.default_rng([seed, 4])
    others = []
    for index in range(count):
        points = (4, 5, 6, 7, 10, 12, 16)[index % 7]
        outer = rng.uniform(0.34, 0.44)
        others.append(_subject_coloured({"points": points, "outer": outer, "inner": outer * rng.uniform(0.6, 0.8),
                                         "hollow": 0.11, "rotation": rng.uniform(0, math.pi)}, True, rng, size))
    sets["stars of other point counts, subject's colours"] = np.stack(others)
    rng = np.random.default_rng([seed, 5])
    sets["the pretraining world"] = np.stack([world.render(world.random_spec(rng), size, int(rng.integers(2 ** 31)))
                                              for _ in range(count)])
    return sets


def positive_sets(count, seed=CALIBRATION_SEED, vae=None):
    """{name: (uint8 pictures, true centres per picture)}: the subject at seeds of its own, clean, mildly
    blurred, and (with a VAE) after its round trip and after round trip and blur."""
    pictures, centres = zip(*(subject_swatch(seed + 100 + index) for index in range(count)))
    pictures = np.stack(pictures)
    sets = {"the subject, clean": (pictures, centres),
            "the subject, mild blur and noise": (blurred(pictures, seed=seed), centres)}
    if vae is not None:
        decoded = round_trip(pictures, vae)
        sets["the subject after the VAE"] = (decoded, centres)
        sets["the subject after the VAE, mild blur and noise"] = (blurred(decoded, seed=seed + 1), centres)
    return sets


def recall(found, centres, size=64, tolerance=2.5):
    """The share of true rosettes lying wholly inside the picture that were found within `tolerance` px."""
    true, hit = 0, 0
    margin = max(RADII)
    for picture_found, picture_centres in zip(found, centres):
        for x, y in picture_centres:
            if margin <= x < size - 1 - margin and margin <= y < size - 1 - margin:
                true += 1
                hit += any((x - fx) ** 2 + (y - fy) ** 2 <= tolerance ** 2 for fx, fy, _, _ in picture_found)
    return hit / max(true, 1)


def calibration_table(count=100, vae=None, seed=CALIBRATION_SEED, judge=None):
    """[(set, kind, share of pictures called the subject, rosette recall or mean rosettes per picture,
    share the judge calls stars or None)]."""
    def judged_stars(pictures):
        if judge is None:
            return None
        from micro.judge import JUDGE_FAMILIES, to_batch

        with torch.no_grad():
            family = judge(to_batch(list(pictures)))[1]["family"].argmax(1)
        return (family == JUDGE_FAMILIES.index("stars")).float().mean().item()

    rows = []
    for name, (pictures, centres) in positive_sets(count, seed, vae=vae).items():
        found = find_rosettes(pictures)
        rows.append((name, "positive", np.mean([len(f) >= MIN_ROSETTES for f in found]), recall(found, centres),
                     judged_stars(pictures)))
    for name, pictures in negative_sets(count, seed).items():
        found = find_rosettes(pictures)
        rows.append((name, "negative", np.mean([len(f) >= MIN_ROSETTES for f in found]),
                     np.mean([len(f) for f in found]), judged_stars(pictures)))
    return rows


def training_images_round_trip(vae, folder="training_images"):
    """(originals, round trips, rosettes found in each round trip) for the instance images at 64 px."""
    from common.training_images import load_training_images

    originals = np.stack([np.asarray(image) for image in load_training_images(folder, 64)])
    decoded = round_trip(originals, vae)
    return originals, decoded, count_rosettes(decoded)


def world_family_after(vae, judge, count=512, seed=CALIBRATION_SEED + 1):
    """The share of `count` fresh fabric-world pictures whose family the judge still names after the
    VAE's round trip: how much of the world a decoder keeps (v1's loses diamonds to dots)."""
    from micro.judge import JUDGE_FAMILIES, to_batch

    rng = np.random.default_rng(seed)
    specs = [world.random_spec(rng) for _ in range(count)]
    pictures = np.stack([world.render(spec, 64, int(rng.integers(2 ** 31))) for spec in specs])
    with torch.no_grad():
        family = judge(to_batch(list(round_trip(pictures, vae))))[1]["family"].argmax(1)
    return float((family == torch.tensor([JUDGE_FAMILIES.index(s["family"]) for s in specs])).float().mean())


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="The rosette detector's calibration on held-out pictures, and "
                                                 "the instance images' round trip through a VAE.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="pictures in each set")
    parser.add_argument("--seed", type=int, default=CALIBRATION_SEED + 1,
                        help="the sets' seed (the rules were set on the sets of seed %d)" % CALIBRATION_SEED)
    parser.add_argument("--vae", default="models/micro/vae",
                        help="the VAE whose round trip is measured: a diffusers folder, or a micro.pretrain stage "
                             "folder (final.safetensors)")
    parser.add_argument("--picture", default="outputs/micro_vae_round_trip.png",
                        help="the instance images above their round trip, to judge by eye")
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKL
    from PIL import Image

    from common.saving import save_image

    from micro.judge import load_judge

    if (Path(args.vae) / "final.safetensors").is_file():
        from micro.pretrain import stage_vae

        vae = stage_vae(args.vae).eval()
    else:
        vae = AutoencoderKL.from_pretrained(args.vae).eval()
    judge = load_judge()
    print("| set | kind | pictures called the subject | rosettes found (positives) / per picture (negatives) "
          "| the judge calls stars |")
    print("|---|---|---|---|---|")
    for name, kind, called, other, judge_stars in calibration_table(args.count, vae, args.seed, judge):
        other = f"{other:.1%}" if kind == "positive" else f"{other:.2f}"
        print(f"| {name} | {kind} | {called:.1%} | {other} | {judge_stars:.1%} |")
    originals, decoded, counts = training_images_round_trip(vae)
    print(f"instance images after the VAE: {sum(c >= MIN_ROSETTES for c in counts)} of {len(counts)} show the "
          f"subject's pattern; rosettes per image {counts} (the originals: {count_rosettes(originals)})")
    print(f"the world after the VAE: the judge names the family of {world_family_after(vae, judge):.1%} of 512 "
          "fresh pictures")
    grid = np.concatenate([np.concatenate(list(originals), 1), np.concatenate(list(decoded), 1)], 0)
    save_image(Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST),
               args.picture)
    print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
