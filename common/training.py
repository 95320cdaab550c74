"""Pieces both trainers share: loss curves, checkpoints for exact resume, and
protection of a user's existing weights.

Checkpoints hold everything an exact resume needs (trainable weights,
optimizer moments, learning-rate schedule position, the data/noise random
generator, the loss history) and hold it as safetensors + JSON, never pickle:
the optimizer's tensors are stored flat under names like `state/3/exp_avg`.
"""

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch

from common.errors import UserError
from common.saving import save_json, save_safetensors

CHECKPOINT_PREFIX = "checkpoint-"


# --- loss curves ------------------------------------------------------------------------------

def smooth(values, weight=0.95):
    """Exponential moving average with bias correction (TensorBoard's smoothing).

    A single update's diffusion loss depends mostly on the random timestep, so
    raw curves look like noise; the average shows the trend.
    """
    smoothed, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight ** count))
    return smoothed


class LossLog:
    """The losses of every update, read from the device in batches.

    Reading a GPU number on the CPU (`loss.item()`, `if not torch.isfinite(loss)`)
    makes Python wait until the GPU has finished all queued work, so the GPU
    idles while Python prepares the next update. The losses therefore stay on
    the device and are read `every` updates, and always before anything is
    saved, so a non-finite loss still stops the run before a checkpoint or
    adapter holds its weights. The smoothed loss for the progress bar is kept
    as a running average instead of being recomputed over the whole history.
    """

    def __init__(self, history, adapter_dir, every=20, weight=0.95):
        self.history, self.adapter_dir, self.every, self.weight = history, adapter_dir, every, weight
        self.pending = []
        self.average, self.count = 0.0, 0
        for value in history["total"]:
            self._average_in(value)

    def _average_in(self, value):
        self.count += 1
        self.average = self.weight * self.average + (1 - self.weight) * value

    @property
    def smoothed(self):
        """The bias-corrected moving average of the total loss (what `smooth` gives last)."""
        return self.average / (1 - self.weight ** self.count) if self.count else float("nan")

    @property
    def updates(self):
        return len(self.history["total"]) + len(self.pending)

    def add(self, **losses):
        """Record one update's losses (tensors; None for a loss this run does not have)."""
        self.pending.append({name: value.detach() for name, value in losses.items() if value is not None})
        return len(self.pending) >= self.every

    def flush(self):
        """Read the pending losses (one wait for the device), check them, append them to the history."""
        if not self.pending:
            return
        names = list(self.pending[0])
        rows = torch.stack([torch.stack([losses[name].float() for name in names])
                            for losses in self.pending]).cpu().tolist()
        first = len(self.history["total"]) + 1
        self.pending = []
        for offset, row in enumerate(rows):
            if not all(math.isfinite(value) for value in row):
                raise non_finite_loss_error(row[names.index("total")], first + offset, self.adapter_dir)
            for name, value in zip(names, row):
                self.history[name].append(value)
            self._average_in(row[names.index("total")])


class PhaseClock:
    """Wall seconds spent in each phase of a run (class images, training, progress grids, ...).

    A phase opened inside another (a progress grid inside the training loop) is
    counted once, in its own name: the outer phase's time excludes it.
    """

    def __init__(self):
        self.seconds = {}
        self._inner = []  # per open phase: seconds spent in phases nested inside it

    @contextlib.contextmanager
    def phase(self, name):
        started = time.perf_counter()
        self.seconds.setdefault(name, 0.0)  # listed in the order the phases begin
        self._inner.append(0.0)
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + spent - self._inner.pop()
            if self._inner:
                self._inner[-1] += spent

    def summary(self, updates, first_update_seconds):
        """The JSON fields: seconds by phase, and the training speed after the first update
        (which also pays for warm-up: CUDA kernels chosen, memory reserved, compilation)."""
        training = self.seconds.get("training", 0.0)
        fields = {"seconds_by_phase": {name: round(value, 2) for name, value in self.seconds.items()},
                  "first_update_seconds": round(first_update_seconds, 3)}
        if updates > 1 and training > first_update_seconds:
            fields["updates_per_second"] = round((updates - 1) / (training - first_update_seconds), 3)
        return fields

    def describe(self, updates, first_update_seconds):
        """The closing line: '800 updates (5.2 updates/s after the first); class images 12 s, training 154 s,
        ...; total 180 s'."""
        speed = self.summary(updates, first_update_seconds).get("updates_per_second")
        def seconds(value):
            return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"

        parts = [f"{name} {seconds(value)}" for name, value in self.seconds.items()]
        return (f"{updates} updates{f' ({speed:.3g} updates/s after the first)' if speed else ''}; "
                f"{', '.join(parts)}; total {seconds(sum(self.seconds.values()))}")


@contextlib.contextmanager
def sampling(accelerator, trained_models):
    """Draw pictures mid-training with exactly the weights being trained.

    Under mixed precision `accelerator.prepare` makes the prepared model return
    fp32, and the pipeline shares that model, so fp32 latents would reach the
    fp16/bf16 VAE ("Input type (float) and bias type (c10::Half) should be the
    same"). Sampling under the same autocast as training lets every layer take
    its input in the format it computes in.
    """
    for model in trained_models:
        model.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            yield
    finally:
        for model in trained_models:
            model.train()


def plot_loss_curves(history, path, title):
    """One panel per loss in `history` ({name: [value per update]}): raw faint, smoothed bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.saving import save_figure

    curves = {name: values for name, values in history.items() if values}
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for axis, (name, values) in zip(axes[0], curves.items()):
        updates = range(1, len(values) + 1)
        axis.plot(updates, values, alpha=0.25, linewidth=0.8, label="raw")
        axis.plot(updates, smooth(values), linewidth=2.0, label="smoothed")
        axis.set_title(f"{name} loss")
        axis.set_xlabel("optimizer update")
        axis.set_yscale("log")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


# --- never overwrite a user's weights -----------------------------------------------------------

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


# --- checkpoints ------------------------------------------------------------------------------

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


def find_checkpoint(adapter_dir, resume):
    """The folder named by --resume ('latest' = the highest complete checkpoint-N)."""
    adapter_dir = Path(adapter_dir)
    if resume != "latest":
        folder = Path(resume)
        if not (folder / "training_state.json").is_file():
            raise UserError(f"{folder} is not a complete checkpoint (no training_state.json)")
        return folder
    complete = [path for path in adapter_dir.glob(f"{CHECKPOINT_PREFIX}*")
                if (path / "training_state.json").is_file() and path.name[len(CHECKPOINT_PREFIX):].isdigit()]
    if not complete:
        raise UserError(f"--resume latest: no checkpoint in {adapter_dir}; start without --resume")
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX):]))


def check_same_configuration(saved, current, folder):
    """Resuming with other settings would silently mix two trainings: refuse, naming the difference."""
    for key, value in current.items():
        if saved.get(key) != value:
            raise UserError(f"{folder} was trained with {key}={saved.get(key)!r}, this run has {value!r}; "
                            "resume with the same settings or start fresh without --resume")


# --- the set-up both trainers share ------------------------------------------------------------

def prepare_run(args, settings, weight_names):
    """Resume point and weight protection, checked before any model is loaded.

    Returns the checkpoint folder to resume from, or None for a fresh start.
    """
    checkpoint = find_checkpoint(args.adapter_dir, args.resume) if args.resume else None
    if checkpoint is not None:
        saved = json.loads((checkpoint / "training_state.json").read_text())["settings"]
        check_same_configuration(saved, settings, checkpoint)
    protect_existing_weights(args.adapter_dir, weight_names, args.overwrite, resuming=checkpoint is not None)
    return checkpoint


COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests swap in a quicker one


def make_accelerator(device, mixed_precision, compile_models=False):
    """(Accelerator, its device, the frozen weights' dtype, the precision name).

    'auto' means fp16 on CUDA and full precision elsewhere. Under
    `accelerate launch` the launcher's settings decide the device.
    `compile_models`: the models given to `accelerator.prepare` are compiled with
    torch.compile (inductor); the pipeline keeps the uncompiled model for sampling.
    """
    from accelerate import Accelerator

    if mixed_precision == "auto":
        mixed_precision = "fp16" if device.type == "cuda" else "no"
    # Accelerate keeps one precision per process and refuses a second Accelerator with another
    # (a notebook that trains twice, the tests, bench/gpu_check). Outside `accelerate launch`
    # nothing else shares that state, so an earlier run's is dropped; a launched run's is kept.
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if AcceleratorState._shared_state and PartialState().distributed_type == DistributedType.NO:
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu",
                              dynamo_backend=COMPILE_BACKEND if compile_models else None)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    return accelerator, accelerator.device, weight_dtype, mixed_precision


# Gradient checkpointing recomputes activations in the backward pass instead of
# keeping them: it saves memory and costs time (docs/performance.md has both).
# Auto turns it on only where the peak without it would not fit; this model of
# that peak (SD 1.5's frozen fp16 weights, plus activations per training image)
# is fitted to the peak measured there.
PEAK_WITHOUT_CHECKPOINTING_GIB = {"weights": 2.2, "per_image_at_512px": 1.25}


def gradient_checkpointing_needed(setting, device, images_per_update, resolution):
    """--gradient-checkpointing: True/False as given; auto: on only for a CUDA GPU too small to train without."""
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return False
    need = (PEAK_WITHOUT_CHECKPOINTING_GIB["weights"]
            + PEAK_WITHOUT_CHECKPOINTING_GIB["per_image_at_512px"] * images_per_update * (resolution / 512) ** 2)
    total = torch.cuda.get_device_properties(device).total_memory / 1024 ** 3
    return total < need + 1.5  # headroom: the CUDA context, the allocator's cache, the progress grids


def adamw(parameter_groups, device, **options):
    """AdamW; on CUDA its fused kernel, which updates all weights in one launch and, under fp16,
    lets the gradient scaler skip an overflowed step without waiting for the GPU."""
    return torch.optim.AdamW(parameter_groups, fused=device.type == "cuda", **options)


def non_finite_loss_error(loss, update, adapter_dir):
    """The one-line error for a NaN or infinite loss (`loss`: a number)."""
    return UserError(f"the loss became {float(loss)} at update {update}; nothing was saved from it "
                     f"(checkpoints in {adapter_dir} are intact): lower --learning-rate or "
                     "use --mixed-precision no, then --resume latest")
