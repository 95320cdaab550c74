"""The DreamBooth paper's measures, on any image embeddings.

Ruiz et al. (2022) score a personalized model with image embeddings (DINO,
CLIP): how close its pictures come to the subject's real photos (subject
fidelity), how close the real photos come to each other (the upper bound), how
much the class prompt alone has drifted toward the subject (PRES, prior
preservation), and how varied the pictures of one prompt are (DIV). Each is a
mean of cosine similarities between embeddings, so the same functions serve
the micro model's judge and, on a GPU, CLIP or DINO.

Embeddings are 2-D tensors, one row per image; they need not be unit length.
One measure needs no embedding at all: the colour-histogram intersection, which
reads the same on the micro world and on anyone's photos.
"""

import numpy as np
import torch


def _unit(embeddings):
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def mean_pairwise_cosine(generated, real):
    """Subject fidelity (the paper's DINO / CLIP-I): the mean cosine over every (generated, real) pair.
    With the class prompt's pictures as `generated`, it is PRES: how far the class drifted to the subject."""
    return (_unit(generated) @ _unit(real).T).mean().item()


def matched_cosine(images, texts):
    """Prompt fidelity (the paper's CLIP-T): the mean cosine between each picture and its own prompt."""
    if len(images) != len(texts):
        raise ValueError("matched_cosine needs one text embedding per image embedding")
    return (_unit(images) * _unit(texts)).sum(-1).mean().item()


def real_vs_real(real):
    """The upper bound of subject fidelity: the mean cosine between different real images of the subject."""
    count = len(real)
    if count < 2:
        raise ValueError("real_vs_real needs at least two images")
    similarity = _unit(real) @ _unit(real).T
    return ((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1))).item()


def diversity(groups):
    """DIV: for each group (one prompt's pictures over several seeds), the mean of 1 - cosine over its
    distinct pairs; then the mean over groups. 0: every seed drew the same picture."""
    values = []
    for embeddings in groups:
        count = len(embeddings)
        if count < 2:
            continue
        similarity = _unit(embeddings) @ _unit(embeddings).T
        pairs = torch.triu_indices(count, count, offset=1)
        values.append((1 - similarity[pairs[0], pairs[1]]).mean().item())
    if not values:
        raise ValueError("diversity needs a group of at least two images")
    return sum(values) / len(values)


def accuracy(predicted, asked):
    """Prompt fidelity read by a classifier: the share of pictures whose predicted label is the asked one."""
    predicted, asked = torch.as_tensor(predicted), torch.as_tensor(asked)
    return (predicted == asked).float().mean().item()


def colour_histogram(image, bins=8):
    """The share of the image's pixels in each of bins x bins x bins RGB cells (8 x 8 x 8 by default)."""
    cells = np.asarray(image.convert("RGB"), dtype=np.int64) * bins // 256
    counts = np.bincount(((cells[..., 0] * bins + cells[..., 1]) * bins + cells[..., 2]).ravel(),
                         minlength=bins ** 3)
    return counts / counts.sum()


def colour_similarity(images, reference_images):
    """Mean histogram intersection of each image's colours with the reference images' (1: the same colours
    in the same shares, 0: none in common). It needs no judge, so it reads the same on any photos."""
    reference = np.mean([colour_histogram(image) for image in reference_images], axis=0)
    return float(np.mean([np.minimum(colour_histogram(image), reference).sum() for image in images]))
