"""The DreamBooth paper's measures, on any image embeddings.

Ruiz et al. (2022) score a personalized model with image embeddings (DINO,
CLIP): how close its pictures come to the subject's real photos (subject
fidelity), how close the real photos come to each other (the upper bound), how
much the class prompt alone has drifted toward the subject (PRES, prior
preservation), and how varied the pictures of one prompt are (DIV). Each is a
mean of cosine similarities between embeddings, so the same functions serve
the micro model's judge and, on a GPU, CLIP or DINO.

Embeddings are 2-D tensors, one row per image; they need not be unit length.
"""

import torch


def _unit(embeddings):
    return torch.nn.functional.normalize(embeddings.float(), dim=-1)


def mean_pairwise_cosine(generated, real):
    """Subject fidelity (the paper's DINO / CLIP-I): the mean cosine over every (generated, real) pair.
    With the class prompt's pictures as `generated`, it is PRES: how far the class drifted to the subject."""
    return (_unit(generated) @ _unit(real).T).mean().item()


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
