"""Checkpoints for an exact resume, and protection of a user's existing weights.

Checkpoints hold everything an exact resume needs (trainable weights,
optimizer moments, learning-rate schedule position, the data/noise random
generator, the loss history) and hold it as safetensors + JSON, never pickle:
the optimizer's tensors are stored flat under names like `state/3/exp_avg`.
"""

import json
import shutil
import time
from pathlib import Path

import torch

from common.errors import UserError
from common.saving import check_writable, save_json, save_safetensors

CHECKPOINT_PREFIX = "checkpoint-"


def protect_existing_weights(folder, weight_names, overwrite, resuming):
    """Refuse to replace weights already in `folder` unless --overwrite; then keep a backup."""
    folder = Path(folder)
    existing = [folder / name for name in weight_names if (folder / name).exists()]
    if not existing or resuming:
        return None
    if not overwrite:
        raise UserError(f"{folder} already holds {existing[0].name} (the downloaded release or an earlier run); "
                        "pass --adapter-dir to write elsewhere, or --overwrite to replace it (a backup is kept)")
    backup = folder / time.strftime("backup-%Y%m%d-%H%M%S")
    backup.mkdir(parents=True)
    for path in existing:
        shutil.move(str(path), str(backup / path.name))
    print(f"note: moved the previous {', '.join(p.name for p in existing)} to {backup}")
    return backup


def _split_optimizer_state(optimizer):
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state/{index}/{name}"] = value
            else:
                plain["state"].setdefault(str(index), {})[name] = value
    return tensors, plain


def _join_optimizer_state(tensors, plain):
    state = {int(index): dict(values) for index, values in plain["state"].items()}
    for key, value in tensors.items():
        _, index, name = key.split("/")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(folder, trainable, optimizer, lr_scheduler, generator, state, rank=0):
    """Write checkpoint-N/: trainable.safetensors, optimizer.safetensors, training_state.json.

    Every process calls this: each saves its own random state (generator_rank<R>.safetensors,
    since each draws other images); process 0 saves the rest, which all processes share.
    """
    folder = Path(folder)
    save_safetensors({"state": generator.get_state()}, folder / f"generator_rank{rank}.safetensors")
    if rank != 0:
        return folder
    optimizer_tensors, optimizer_plain = _split_optimizer_state(optimizer)
    save_safetensors(trainable, folder / "trainable.safetensors")
    save_safetensors(optimizer_tensors, folder / "optimizer.safetensors")
    # Written last: a checkpoint without training_state.json is incomplete and never resumed from.
    save_json({**state, "optimizer": optimizer_plain, "lr_scheduler": lr_scheduler.state_dict()},
              folder / "training_state.json")
    return folder


def load_checkpoint(folder, parameters, optimizer, lr_scheduler, generator, rank=0):
    """Restore a checkpoint into live objects; returns its training_state.json contents."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = json.loads((folder / "training_state.json").read_text())
    trainable = load_file(str(folder / "trainable.safetensors"))
    if set(trainable) != set(parameters):
        raise UserError(f"{folder} holds other trainable weights than this run trains; "
                        "it comes from another configuration: start fresh without --resume")
    with torch.no_grad():
        for name, tensor in trainable.items():
            parameters[name].copy_(tensor)
    optimizer_tensors = load_file(str(folder / "optimizer.safetensors"))
    generator_file = folder / f"generator_rank{rank}.safetensors"
    if not generator_file.is_file():
        raise UserError(f"{folder} was saved by fewer processes than this run has; resume with as many processes")
    generator.set_state(load_file(str(generator_file))["state"])
    optimizer.load_state_dict(_join_optimizer_state(optimizer_tensors, state.pop("optimizer")))
    lr_scheduler.load_state_dict(state.pop("lr_scheduler"))
    return state


CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors")
STATE_KEYS = ("update", "settings", "optimizer", "lr_scheduler")


def damage(folder, rank=0):
    """None if checkpoint `folder` can be resumed from; else (file name, what is wrong with it).

    Every file is read in full: a file cut short by a full disk or an interrupted copy can keep an
    intact header, and only reading its tensors shows that their bytes are missing."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        state = json.loads((folder / "training_state.json").read_text())
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            return "training_state.json", f"no {missing[0]}"
    except (OSError, ValueError) as error:
        return "training_state.json", str(error).splitlines()[0][:80]
    for name in (*CHECKPOINT_FILES, f"generator_rank{rank}.safetensors"):
        try:
            load_file(str(folder / name))
        except Exception as error:  # safetensors raises its own error type for a cut or garbled file
            return name, (str(error).splitlines() or [type(error).__name__])[0][:80]
    return None


def _numbered_checkpoints(adapter_dir):
    """checkpoint-N folders holding a training_state.json (the file written last), newest first."""
    found = [path for path in Path(adapter_dir).glob(f"{CHECKPOINT_PREFIX}*")
             if path.name[len(CHECKPOINT_PREFIX):].isdigit() and (path / "training_state.json").is_file()]
    return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]), reverse=True)


def newest_intact(adapter_dir, rank=0, skip=()):
    for path in _numbered_checkpoints(adapter_dir):
        if path.resolve() not in {Path(s).resolve() for s in skip} and damage(path, rank) is None:
            return path
    return None


def find_checkpoint(adapter_dir, resume, rank=0):
    """The folder named by --resume ('latest' = the newest intact checkpoint-N), checked file by file.

    'latest' passes over a damaged newest checkpoint to the newest intact one, saying so in one line;
    a damaged checkpoint named by path stops the run, naming the bad file and the one to use instead."""
    adapter_dir = Path(adapter_dir)
    if resume != "latest":
        folder = Path(resume)
        if not (folder / "training_state.json").is_file():
            raise UserError(f"{folder} is not a complete checkpoint (no training_state.json)")
        problem = damage(folder, rank)
        if problem:
            intact = newest_intact(folder.parent, rank, skip=[folder])
            advice = f"resume from {intact} instead" if intact else "no intact checkpoint is left beside it; start fresh without --resume"
            raise UserError(f"{folder / problem[0]} is damaged ({problem[1]}); {advice}")
        return folder
    candidates = _numbered_checkpoints(adapter_dir)
    if not candidates:
        raise UserError(f"--resume latest: no checkpoint in {adapter_dir}; start without --resume")
    damaged = []
    for folder in candidates:
        problem = damage(folder, rank)
        if problem is None:
            if damaged:
                print(f"warning: {damaged[0][0] / damaged[0][1][0]} is damaged ({damaged[0][1][1]}); resuming from "
                      f"{folder} instead" + (f" ({len(damaged)} damaged checkpoints passed over)" if len(damaged) > 1 else ""))
            return folder
        damaged.append((folder, problem))
    raise UserError(f"--resume latest: every checkpoint in {adapter_dir} is damaged (the newest: "
                    f"{damaged[0][0] / damaged[0][1][0]}, {damaged[0][1][1]}); start fresh without --resume")


def prune_checkpoints(adapter_dir, keep):
    """Delete all but the newest `keep` checkpoint-N folders (diffusers' --checkpoints_total_limit);
    called after a new checkpoint is completely written, so that one intact checkpoint always remains."""
    for old in _numbered_checkpoints(adapter_dir)[keep:]:
        shutil.rmtree(old)


def check_same_configuration(saved, current, folder):
    """Resuming with other settings would silently mix two trainings: refuse, naming the difference."""
    for key, value in current.items():
        if saved.get(key) != value:
            raise UserError(f"{folder} was trained with {key}={saved.get(key)!r}, this run has {value!r}; "
                            "resume with the same settings or start fresh without --resume")


def fingerprint(args, names, **derived):
    """The settings that must match for a resume to continue the same training: the flags
    `names` (as resolved for the base model) and the `derived` values."""
    return {**{name: getattr(args, name) for name in names}, **derived}


def prepare_run(args, settings, weight_names):
    """Resume point and weight protection, checked before any model is loaded.

    Returns the checkpoint folder to resume from, or None for a fresh start.
    """
    checkpoint = find_checkpoint(args.adapter_dir, args.resume) if args.resume else None
    if checkpoint is not None:
        saved = json.loads((checkpoint / "training_state.json").read_text())["settings"]
        check_same_configuration(saved, settings, checkpoint)
    check_writable(args.adapter_dir, "--adapter-dir")
    check_writable(args.output_dir, "--output-dir")
    protect_existing_weights(args.adapter_dir, weight_names, args.overwrite, resuming=checkpoint is not None)
    return checkpoint
