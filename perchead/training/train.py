"""The one training loop (Accelerate, resume, non-finite stop, progress) and its tasks (paper §3.4, §3.5).

    python -m perchead.training.train --task reconstruct --preset demo --data synthetic --output runs/demo
    python -m perchead.training.train --task style --data runs/synthetic128 --output runs/style
    accelerate launch --multi_gpu --num_processes 8 -m perchead.training.train --preset paper \
        --data /data/nersemble_multiview --output runs/paper --batch-size 64
    torchrun --nproc_per_node 2 -m perchead.training.train --preset tiny --output runs/tiny2   # CPU, gloo

Tasks (:data:`TASKS`, see :class:`~perchead.training.config.Task`): ``reconstruct`` — phase 1 trains the
base model without the refiner CNN, phase 2 freezes it and trains the CNN only, on renders at the target
views; ``edit`` — the editing model from a base checkpoint, on label maps plus the frozen style encoder's
embedding of another view; ``style`` and ``parser`` (:mod:`perchead.training.style`,
:mod:`perchead.training.parser`). Each phase has its own AdamW with warm-up + cosine decay; a non-finite
loss stops the run with a ``FloatingPointError`` naming the step. Checkpoints (``OUTPUT/checkpoint/``: the
model's ``save_pretrained``, optimizer tensors as safetensors, JSON state; never pickle) make ``--resume``
exact; the final weights go to ``OUTPUT`` and ``OUTPUT/metrics.jsonl`` logs every step.

Data parallelism (``accelerate launch`` or ``torchrun``, any number of processes and machines):
``batch_size`` is the global batch, split evenly over the W processes; process r reads positions
``r, r + W, …`` of one shuffled index stream, so together the processes see exactly the samples one
process would. Every process builds the model from ``seed``, then takes rank 0's trainable weights;
gradients and the logged loss values are averaged over the processes after each backward pass, so
the weights stay identical everywhere (checked at every checkpoint and at the end) and match a
one-process run with the same global batch up to floating-point rounding. Only rank 0 writes files;
checkpoints keep every process's random state, and a resumed run may use another process count.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from perchead.training import edit as edit_task
from perchead.training import parser as parser_task
from perchead.training import reconstruct as reconstruct_task
from perchead.training import style as style_task
from perchead.training.config import MIXED_PRECISION, Task, TrainConfig
from perchead.training.reconstruct import build_dataset


TASKS: dict[str, Task] = {
    "reconstruct": reconstruct_task.TASK,
    "edit": edit_task.TASK,
    "style": style_task.TASK,
    "parser": parser_task.TASK,
}


def register_task(name: str, task: Task) -> None:
    """Adds a task (e.g. the editing fine-tune of §3.5) to :data:`TASKS`."""
    if not isinstance(task, Task):
        raise ValueError(f"register_task expects a Task, got {type(task).__name__}")
    TASKS[name] = task


# --------------------------------------------------------------------------------------------- data
def index_stream(n: int, seed: int, start: int, rank: int = 0, world: int = 1) -> Iterator[int]:
    """An endless, reproducible shuffled stream of dataset indices, starting at position ``start``.

    Epoch ``e`` is a permutation drawn from ``seed + e``; process ``rank`` of ``world`` takes every
    ``world``-th index, so resuming at a global position needs no data to be read.
    """
    if n <= 0:
        raise ValueError("the dataset is empty")
    pos = start * world + rank
    epoch, perm = -1, None
    while True:
        e, offset = divmod(pos, n)
        if e != epoch:
            epoch, perm = e, torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))
        yield int(perm[offset])
        pos += world


def per_process_batch(batch_size: int, world: int) -> int:
    """Each of ``world`` processes' share of the global ``batch_size``.

    Raises:
        ValueError: if the global batch does not split evenly over the processes.
    """
    if batch_size % world:
        raise ValueError(f"the global batch size {batch_size} does not split evenly over {world} processes; "
                         f"use a multiple of {world}")
    return batch_size // world


def batches(dataset, config: TrainConfig, start_step: int, rank: int, world: int) -> Iterator[dict[str, Any]]:
    """Process ``rank``'s share of the global batches from global step ``start_step`` on.

    Step s of process r holds stream positions ``s·batch_size + r + k·world`` (k < batch_size / world):
    over all processes exactly the global batch a single process would draw at that step.
    """
    from torch.utils.data import DataLoader

    local = per_process_batch(config.batch_size, world)
    stream = index_stream(len(dataset), config.seed, start_step * local, rank, world)

    class _Sampler(torch.utils.data.Sampler):
        def __iter__(self):
            return stream

    loader = DataLoader(dataset, batch_size=local, sampler=_Sampler(), num_workers=config.num_workers,
                        persistent_workers=False)
    yield from loader


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------- checkpoints
def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Optimizer state as safetensors (tensors) + JSON (scalars, param groups); no pickle."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, step: int, config: TrainConfig,
                    rng_states: Tensor | None = None) -> None:
    """Writes a resumable checkpoint atomically (into ``folder.tmp``, then renamed).

    Args:
        rng_states: every process's CPU random state, one row per rank ``[W, S]`` (default: this process's).
    """
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    (tmp / "model").mkdir(parents=True)
    model.save_pretrained(str(tmp / "model"))
    save_optimizer(optimizer, tmp)
    if rng_states is None:
        rng_states = torch.get_rng_state()[None]
    save_file({"cpu_rng": rng_states.contiguous()}, str(tmp / "rng.safetensors"))
    state = {"step": step, "phase": config.phase_at(step - 1) if step > 0 else 1,  # phase of the optimizer
             "scheduler": scheduler.state_dict(), "train_config": config.to_dict()}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if folder.exists():
        _rmtree(folder)
    tmp.rename(folder)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def load_rng_state(folder: Path, rank: int) -> None:
    """Restores process ``rank``'s CPU random state from a checkpoint.

    A checkpoint written by fewer processes than are resuming it gives the extra ranks a fresh stream
    derived from the saved one (a different process count is not an exact resume anyway).
    """
    states = load_file(str(folder / "rng.safetensors"))["cpu_rng"]
    if states.dim() == 1:  # checkpoints of one process before the per-rank layout
        states = states[None]
    # a row is a view into the stacked tensor; set_rng_state needs a tensor of its own (a view crashes it)
    torch.set_rng_state((states[rank] if rank < len(states) else states[0]).clone())
    if rank >= len(states):
        torch.manual_seed(int(torch.randint(2**62, (1,))) + rank)


# --------------------------------------------------------------------------------------------- loop
# Data parallelism without DistributedDataParallel: the trainable set changes between the phases and the
# losses call model methods other than ``forward``, so the loop synchronises explicitly: rank 0's weights
# at the start, averaged gradients after every backward pass (in flat buckets, one collective each).
_BUCKET_NUMEL = 2**24


def _buckets(tensors: list[Tensor]) -> Iterator[list[Tensor]]:
    """Consecutive groups of same-dtype tensors of at most about ``_BUCKET_NUMEL`` elements."""
    bucket: list[Tensor] = []
    numel = 0
    for t in tensors:
        if bucket and (numel + t.numel() > _BUCKET_NUMEL or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, numel = [], 0
        bucket.append(t)
        numel += t.numel()
    if bucket:
        yield bucket


def _broadcast_from_main(model: nn.Module, accelerator) -> None:
    """Copies rank 0's trainable parameters to every process (a no-op on one process)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for bucket in _buckets([p.data for p in model.parameters() if p.requires_grad]):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.broadcast(flat, src=0)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _average_gradients(params: list[nn.Parameter], accelerator) -> None:
    """Averages the gradients of ``params`` over the processes (a no-op on one process)."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= accelerator.num_processes
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _average_logs(loss: Tensor, logs: dict[str, float], accelerator) -> tuple[float, dict[str, float]]:
    """The step's loss and logged values averaged over the processes (one collective); floats."""
    keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float)))
    values = torch.tensor([float(loss.detach())] + [float(logs[k]) for k in keys], dtype=torch.float64,
                          device=accelerator.device)
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= accelerator.num_processes
    values = values.tolist()
    return values[0], {**logs, **dict(zip(keys, values[1:]))}


def _check_in_sync(model: nn.Module, accelerator, step: int) -> None:
    """Raises if the processes' weights differ (they cannot by construction; this guards the construction)."""
    if accelerator.num_processes == 1:
        return
    names, params = zip(*model.named_parameters())
    with torch.no_grad():
        fingerprint = torch.stack([p.detach().double().sum() for p in params])  # [n]
    every = accelerator.gather(fingerprint).view(accelerator.num_processes, -1)  # [W, n]
    if not torch.equal(every, every[:1].expand_as(every)):
        bad = [names[i] for i in (every != every[:1]).any(0).nonzero().flatten().tolist()]
        raise RuntimeError(f"the processes' weights differ after step {step}: {bad[:5]}")


def _make_optimizer(groups: list[dict[str, Any]], lr: float, config: TrainConfig, phase_steps: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay, betas=config.adam_betas,
                                  eps=config.adam_eps)
    warmup = min(config.warmup_steps, max(phase_steps - 1, 0))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, max(phase_steps, 1))
    return optimizer, scheduler


def train(config: TrainConfig, model_config=None, resume: bool = False, progress: bool = True, dataset=None) -> Path:
    """Runs (or resumes) a training run.

    Args:
        config: the run settings.
        model_config: a PercHeadConfig (default: ``PercHeadConfig.preset(config.preset)``).
        resume: continue from ``OUTPUT/checkpoint`` if it exists.
        progress: show a tqdm progress bar.
        dataset: a map-style dataset of sample dicts (see :mod:`perchead.data`) to use instead of :func:`build_dataset`.

    Returns:
        The output folder, holding config.json + model.safetensors of the final weights.

    Raises:
        FloatingPointError: on a non-finite loss, naming the step.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from perchead.models.config import PercHeadConfig

    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; registered: {sorted(TASKS)}")
    task = TASKS[config.task]
    out = Path(config.output)
    ckpt = out / "checkpoint"
    use_cuda = torch.cuda.is_available()
    precision = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if use_cuda else "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=not use_cuda)
    rank, world = accelerator.process_index, accelerator.num_processes
    per_process_batch(config.batch_size, world)  # fails early when the batch does not split
    torch.manual_seed(config.seed)  # the same initial weights on every process, as on one

    # 1. model, from the checkpoint when resuming
    step = 0
    state: dict[str, Any] = {}
    if resume and (ckpt / "state.json").exists():
        state = json.loads((ckpt / "state.json").read_text())
        step = int(state["step"])
        model = task.build_model(None, str(ckpt / "model"))
        if accelerator.is_main_process:
            print(f"[perchead.training.train] resuming from {ckpt} at step {step}", flush=True)
    else:
        if model_config is None:
            model_config = (task.model_config(config) if task.model_config is not None
                            else PercHeadConfig.preset(config.preset))
        model = task.build_model(model_config, config.init_from)
    model.train()
    model.to(accelerator.device)
    _broadcast_from_main(model, accelerator)
    torch.manual_seed(config.seed + rank)  # each process's own stream for in-step randomness
    # Parameters frozen by design (e.g. the DINOv2 branch) stay frozen in every phase.
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}

    # 2. data: per-process shards of an endless shuffled index stream
    if dataset is None:
        with accelerator.main_process_first():  # rank 0 pre-renders (when asked to), the others then read
            dataset = (task.build_dataset(config, model) if task.build_dataset is not None
                       else build_dataset(config, model.config.render))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=1))
        if world > 1:
            print(f"[perchead.training.train] {world} processes, global batch {config.batch_size} "
                  f"({config.batch_size // world} per process)", flush=True)
    log_file = open(out / "metrics.jsonl", "a") if accelerator.is_main_process else None

    data_iter = None
    phase = None
    optimizer = scheduler = loss_fn = None
    bar = tqdm(total=config.last_step, initial=step, disable=not (progress and accelerator.is_main_process),
               desc="train", dynamic_ncols=True)
    t_last = time.perf_counter()
    records: list[dict[str, Any]] = []  # this run's step records (also in metrics.jsonl)
    try:
        while step < config.last_step:
            # 3. (re)build the phase's optimizer, scheduler and loss at the phase boundary
            if config.phase_at(step) != phase:
                phase = config.phase_at(step)
                phase_steps = config.phase1_steps if phase == 1 else config.phase2_steps
                params = [p for p in task.trainable(model, phase) if id(p) in trainable_ids]
                if not params:
                    raise ValueError(f"phase {phase} has no trainable parameters")
                for p in model.parameters():
                    p.requires_grad_(False)
                for p in params:
                    p.requires_grad_(True)
                groups = task.param_groups(model, params, config) if task.param_groups else [{"params": params}]
                optimizer, scheduler = _make_optimizer(groups, config.lr if phase == 1 else config.lr_phase2,
                                                       config, phase_steps)
                if state and state.get("phase") == phase and (ckpt / "optimizer.json").exists():
                    load_optimizer(optimizer, ckpt)
                    scheduler.load_state_dict(state["scheduler"])
                    load_rng_state(ckpt, rank)
                state = {}
                loss_fn = task.build_loss(config, phase)
                if data_iter is None:
                    data_iter = batches(dataset, config, step, rank, world)
                if accelerator.is_main_process:
                    n = sum(p.numel() for p in params)
                    print(f"[perchead.training.train] phase {phase}: {n:,} trainable parameters, {phase_steps} steps",
                          flush=True)

            # 4. one optimisation step
            batch = to_device(next(data_iter), accelerator.device)
            with accelerator.autocast():
                loss, logs = loss_fn(model, batch)
            loss_value, logs = _average_logs(loss, logs, accelerator)  # every process stops together
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite loss {loss_value} at step {step} (phase {phase}): {logs}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(params, accelerator)
            grad_norm = None
            if config.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                if not torch.isfinite(grad_norm):
                    raise FloatingPointError(f"non-finite gradient norm at step {step} (phase {phase})")
            optimizer.step()
            scheduler.step()
            if task.after_step is not None:
                task.after_step(model)
            step += 1

            # 5. logging and checkpoints
            now = time.perf_counter()
            record = {"step": step, "phase": phase, "lr": scheduler.get_last_lr()[0], "time_s": now - t_last, **logs}
            t_last = now
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            records.append(record)
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                if step % config.log_every == 0:
                    log_file.flush()
            bar.update(1)
            if step % config.log_every == 0:
                bar.set_postfix(loss=f"{logs['total']:.4f}", phase=phase)
            if step % config.save_every == 0 or step == config.last_step:
                _check_in_sync(model, accelerator, step)
                rng_states = accelerator.gather(torch.get_rng_state()[None].to(accelerator.device)).cpu()  # [W, S]
                if accelerator.is_main_process:
                    save_checkpoint(ckpt, model, optimizer, scheduler, step, config, rng_states)
                accelerator.wait_for_everyone()
            if config.eval_every and step % config.eval_every == 0 and accelerator.is_main_process:
                _eval_renders(model, out, step)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    # 6. final weights
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(str(out))
        if task.finish is not None:
            task.finish(model, config, out, records)
        print(f"[perchead.training.train] done: {step} steps; weights in {out}", flush=True)
    return out


def _eval_renders(model: nn.Module, out: Path, step: int) -> None:
    """Writes a small contact sheet of held-out validation heads (periodic evaluation renders)."""
    from perchead.data.figures import contact_sheet

    was_training = model.training
    model.eval()
    try:
        contact_sheet(model, out / "eval" / f"step_{step:07d}.png", subjects=2, split="val")
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, bool, bool]:
    """Parses the command line into (TrainConfig, resume, no_progress)."""
    p = argparse.ArgumentParser(prog="python -m perchead.training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="reconstruct", help=f"registered task ({', '.join(sorted(TASKS))})")
    p.add_argument("--preset", default="demo", help="paper | demo | tiny (style, parser: demo | tiny)")
    p.add_argument("--data", default="synthetic", help="'synthetic' or an on-disk multi-view dataset folder")
    p.add_argument("--synthetic-subjects", type=int, default=None,
                   help="pre-render the first N synthetic train heads into the --data folder first (resumable)")
    p.add_argument("--synthetic-views", type=int, default=None, help="views per pre-rendered head (default 16)")
    p.add_argument("--max-subjects", type=int, default=None, help="use only the first N subjects of --data")
    p.add_argument("--output", default=None, help="run folder (default runs/<preset>)")
    p.add_argument("--steps", type=int, default=None, help="one-phase tasks: all steps (sets --phase2-steps 0)")
    p.add_argument("--phase1-steps", type=int, default=None)
    p.add_argument("--phase2-steps", type=int, default=None)
    p.add_argument("--stop-at", type=int, default=None,
                   help="end after this global step; the schedules keep the length of both phases")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-targets", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-phase2", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--render-size", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="style / parser training image side")
    p.add_argument("--val-heads", type=int, default=None, help="style / parser: held-out heads scored at the end")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help="auto: bf16 autocast on CUDA, none on CPU")
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--init-from", default=None, help="folder or repo id of weights to start from")
    p.add_argument("--style", default=None, help="style encoder folder or id (--task edit)")
    p.add_argument("--loss", default=None,
                   help='JSON loss-weight overrides per phase, e.g. \'{"1": {"mask": 1.0}, "2": {"l1": 1.0}}\'')
    p.add_argument("--options", default=None, help='JSON task options, e.g. \'{"crop_size": 96}\' (--task parser)')
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in (
        "data", "synthetic_subjects", "synthetic_views", "max_subjects", "output", "phase1_steps", "phase2_steps",
        "stop_at", "batch_size", "n_targets", "lr", "lr_phase2", "weight_decay", "warmup_steps", "grad_clip",
        "render_size", "image_size", "val_heads", "num_workers", "mixed_precision", "save_every", "log_every",
        "eval_every", "seed", "init_from", "style")}
    if args.steps is not None:
        overrides.update(phase1_steps=args.steps, phase2_steps=0)
    if args.loss:
        overrides["loss_overrides"] = json.loads(args.loss)
    if args.options:
        overrides["options"] = json.loads(args.options)
    config = TrainConfig.preset_defaults(args.preset, task=args.task, **overrides)
    return config, args.resume, args.no_progress


def main(argv: list[str] | None = None) -> None:
    config, resume, no_progress = parse_args(argv)
    train(config, resume=resume, progress=not no_progress)


if __name__ == "__main__":
    main(sys.argv[1:])
