"""The embedded micro model: a procedural fabric world, its tokenizer, its pretraining, and its judge.

Nothing here is needed to use Stable Diffusion 1.5; it exists so that every
exercise runs, and shows something real, on a laptop CPU with no downloads.
"""
