"""A CLIP-format tokenizer for the fabric world, trained with byte-pair encoding on its captions.

Every word of the world's captions and of the exercises' prompts becomes one
token; any other word falls back to smaller pieces, down to single letters,
so an unseen word such as "sks" becomes a few rare tokens, as in real CLIP.
"""

import json
from pathlib import Path

import numpy as np

from common.prompts import IDENTIFIER, PLACEHOLDER_TOKEN, every_prompt
from micro import world

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
ASCII = [chr(code) for code in range(33, 127)]


def corpus(count=20000, seed=0):
    rng = np.random.default_rng(seed)
    captions = [world.caption(world.random_spec(rng), rng) for _ in range(count)]
    # The exercise prompts without "sks" (and without TI tokens): their words must be whole tokens.
    extra = [p.replace(f"{IDENTIFIER} ", "").replace(PLACEHOLDER_TOKEN, "") for p in every_prompt()]
    return captions + extra * 20


def build_tokenizer(folder, vocab_size=1000):
    """Train the BPE merges, write vocab.json and merges.txt, and return a CLIPTokenizer of them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[],
                                  initial_alphabet=ASCII, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(corpus(), trainer)
    scratch = folder / "_bpe"
    scratch.mkdir(exist_ok=True)
    bpe.model.save(str(scratch))
    vocab = json.loads((scratch / "vocab.json").read_text())
    merges = (scratch / "merges.txt").read_text().splitlines()
    # Every letter alone and at a word's end, so no word is ever unknown; then CLIP's two specials.
    for piece in ASCII + [c + "</w>" for c in ASCII] + SPECIAL:
        vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    body = [line for line in merges if line and not line.startswith("#")]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(body) + "\n")
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    tokenizer.save_pretrained(folder)
    return tokenizer
