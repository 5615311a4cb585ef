"""What a training run is: :class:`TrainConfig` with ONE preset table for every task, and :class:`Task`.

A task says how to build its model, its data and its loss; :func:`perchead.training.train.train` is the one
loop that runs any of them (Accelerate, resume, non-finite stop, progress). Tasks: ``reconstruct`` (the
base model, paper §3.4), ``edit`` (the editing fine-tune, §3.5), ``style`` (the offline CLIP style
encoder) and ``parser`` (the offline face parser). :data:`TRAIN_PRESETS` holds the per-(task, preset)
defaults; ``edit`` uses ``reconstruct``'s.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

LossFn = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, dict[str, float]]]
TASK_NAMES = ("reconstruct", "edit", "style", "parser")

# Loss weights per phase (perchead.training.losses.LossConfig fields). paper: phase 1 = DINOv2 + SAM 2.1,
# phase 2 = DINOv2 + L1 + LPIPS (paper §3.4). demo / tiny (ours: CPU, no foundation-model weights): phase 1 =
# 0.8 L1 + 0.2 (1 − SSIM) (the 3DGS pixel loss mix) + 0.5 silhouette; phase 2 = 0.8 L1 + 0.2 (1 − SSIM).
PAPER_LOSS = {"1": dict(dino=1.0, sam=1.0), "2": dict(dino=1.0, l1=1.0, lpips=1.0)}
PIXEL_LOSS = {"1": dict(l1=0.8, ssim=0.2, mask=0.5), "2": dict(l1=0.8, ssim=0.2)}

# Per-(task, preset) defaults, all ours (the paper trains 70 h + 24 h on one RTX 3090 and uses pretrained
# CLIP and FaRL). Values not listed take the TrainConfig field defaults.
TRAIN_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    # 300k + 100k steps, batch 8 × 4 targets at 512², lr 1e-4 / 1e-4, 2k warm-up
    ("reconstruct", "paper"): dict(phase1_steps=300_000, phase2_steps=100_000, batch_size=8, n_targets=4, lr=1e-4,
                                   lr_phase2=1e-4, warmup_steps=2000, save_every=2000, log_every=50, num_workers=8,
                                   loss_weights=PAPER_LOSS),
    # the bundled checkpoint: ~0.6–0.8 s/step on a 2-core CPU from pre-rendered heads: ~1.2 h
    ("reconstruct", "demo"): dict(phase1_steps=6000, phase2_steps=300, batch_size=4, n_targets=3, lr=1e-3,
                                  lr_phase2=5e-4, warmup_steps=100, save_every=100, log_every=10, num_workers=1,
                                  loss_weights=PIXEL_LOSS),
    ("reconstruct", "tiny"): dict(phase1_steps=4, phase2_steps=2, batch_size=2, n_targets=2, lr=1e-3, lr_phase2=1e-3,
                                  warmup_steps=1, save_every=2, log_every=1, loss_weights=PIXEL_LOSS),
    # CLIP's recipe scaled down: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.1 on matrices, a contrastive batch of 64
    ("style", "demo"): dict(phase1_steps=4000, phase2_steps=0, batch_size=64, lr=1e-3, weight_decay=0.1,
                            warmup_steps=200, grad_clip=0.0, adam_betas=(0.9, 0.98), adam_eps=1e-6, val_heads=64,
                            save_every=500, log_every=100, image_size=128),
    ("style", "tiny"): dict(phase1_steps=20, phase2_steps=0, batch_size=12, lr=3e-3, weight_decay=0.1, warmup_steps=2,
                            grad_clip=0.0, adam_betas=(0.9, 0.98), adam_eps=1e-6, val_heads=0, save_every=10,
                            log_every=1, image_size=32),
    ("parser", "demo"): dict(phase1_steps=2000, phase2_steps=0, batch_size=16, lr=1e-3, weight_decay=0.01,
                             warmup_steps=100, grad_clip=0.0, val_heads=8, save_every=500, log_every=50,
                             image_size=128),
    ("parser", "tiny"): dict(phase1_steps=12, phase2_steps=0, batch_size=4, lr=3e-3, weight_decay=0.01, warmup_steps=1,
                             grad_clip=0.0, val_heads=1, save_every=6, log_every=1, image_size=32),
}


MIXED_PRECISION = ("auto", "bf16", "no")


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model config. Per-task, per-preset defaults: :meth:`preset_defaults`.

    Attributes:
        preset: model preset ("paper" | "demo" | "tiny"), see :class:`perchead.models.config.PercHeadConfig`;
            for ``style`` and ``parser`` the preset of their small networks ("demo" | "tiny").
        data: "synthetic" (synthetic heads rendered on the fly or up front) or the folder of an on-disk
            multi-view dataset.
        synthetic_subjects: with a folder ``data``, first pre-render the first N heads of the synthetic
            train split into it (skipping subjects already there), so one command both makes the data
            and trains; 0 = use the folder as it is.
        synthetic_views: views per pre-rendered subject (the first 16 are fixed key views).
        max_subjects: use only the first N subjects of a ``data`` folder (``style``, ``parser``); None = all.
        output: run folder (checkpoint, metrics.jsonl, final weights).
        task: one of :data:`TASK_NAMES` (or a task added with ``register_task``).
        phase1_steps: steps of phase 1 (reconstruct: base without CNN; style, parser: all their steps).
        phase2_steps: steps of phase 2 (CNN only, base frozen; 0 for style and parser).
        stop_at: end the run after this global step, the schedules keeping the length of both phases (a
            stage cut short by a time budget, reproduced); None = run all steps.
        batch_size: samples per step over all processes (the global batch; each of W processes takes
            batch_size / W, which must be a whole number).
        n_targets: target views per subject per step (reconstruct, edit).
        lr: phase-1 peak learning rate.
        lr_phase2: phase-2 peak learning rate.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        adam_eps: AdamW epsilon.
        warmup_steps: linear warm-up steps at the start of each phase.
        grad_clip: max gradient L2 norm (0 = off).
        render_size: size of the rendered / target views the loss sees (None = the model's render_size).
        image_size: input side of the style and parser networks' training images.
        val_heads: held-out val-split heads the style and parser tasks are scored on after training.
        num_workers: data loader worker processes.
        mixed_precision: "auto" (bf16 autocast on CUDA, none on CPU), "bf16" or "no" (float32 throughout).
        log_every: steps between progress-bar / log flushes.
        save_every: steps between checkpoints.
        eval_every: steps between evaluation renders (0 = off; reconstruct only).
        seed: random seed.
        init_from: optional folder / repo id of weights to start from (fine-tuning).
        style: folder / id of the frozen style encoder
            (:class:`perchead.models.style_encoder.StyleEncoder`) of the ``edit`` task.
        loss_weights: the preset's :class:`~perchead.training.losses.LossConfig` fields per phase
            (reconstruct, edit): ``{"1": {...}, "2": {...}}``.
        loss_overrides: LossConfig fields replacing ``loss_weights``' per phase (``--loss``).
        options: task-specific settings (see each task's ``OPTIONS``), e.g. ``{"crop_size": 96}``.
    """

    preset: str = "demo"
    data: str = "synthetic"
    synthetic_subjects: int = 0
    synthetic_views: int = 16
    max_subjects: int | None = None
    output: str = "runs/demo"
    task: str = "reconstruct"
    phase1_steps: int = 3000
    phase2_steps: int = 300
    stop_at: int | None = None
    batch_size: int = 4
    n_targets: int = 4
    lr: float = 1e-3
    lr_phase2: float = 5e-4
    weight_decay: float = 0.05
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    warmup_steps: int = 100
    grad_clip: float = 1.0
    render_size: int | None = None
    image_size: int = 128
    val_heads: int = 0
    num_workers: int = 0
    mixed_precision: str = "auto"
    log_every: int = 10
    save_every: int = 250
    eval_every: int = 0
    seed: int = 0
    init_from: str | None = None
    style: str | None = None
    loss_weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    loss_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("phase1_steps", "phase2_steps", "warmup_steps", "num_workers", "eval_every",
                     "synthetic_subjects", "val_heads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "n_targets", "log_every", "save_every", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.phase1_steps + self.phase2_steps == 0:
            raise ValueError("phase1_steps + phase2_steps must be positive")
        if self.stop_at is not None and not 0 < self.stop_at <= self.total_steps:
            raise ValueError(f"stop_at must be in 1..{self.total_steps} (phase1_steps + phase2_steps), "
                             f"got {self.stop_at}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr <= 0 or self.lr_phase2 <= 0:
            raise ValueError("learning rates must be positive")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    @property
    def total_steps(self) -> int:
        return self.phase1_steps + self.phase2_steps

    @property
    def last_step(self) -> int:
        """The global step the run ends at (``stop_at`` or all steps)."""
        return self.total_steps if self.stop_at is None else self.stop_at

    def phase_at(self, step: int) -> int:
        """The phase (1 or 2) that global step ``step`` belongs to."""
        return 1 if step < self.phase1_steps else 2

    @classmethod
    def preset_defaults(cls, preset: str, task: str | None = None, **overrides) -> "TrainConfig":
        """The :data:`TRAIN_PRESETS` row of (task, preset), with ``overrides`` (None values are ignored).

        Tasks without rows of their own (``edit``, tasks added with ``register_task``) use ``reconstruct``'s.

        Raises:
            ValueError: for a (task, preset) pair without a row.
        """
        task = task or "reconstruct"
        row = task if any(t == task for t, _ in TRAIN_PRESETS) else "reconstruct"  # edit, added tasks
        if (row, preset) not in TRAIN_PRESETS:
            known = sorted(p for t, p in TRAIN_PRESETS if t == row) or sorted({p for _, p in TRAIN_PRESETS})
            raise ValueError(f"unknown preset {preset!r} for task {task!r}; expected one of {known}")
        values = copy.deepcopy(dict(TRAIN_PRESETS[(row, preset)], preset=preset, task=task, output=f"runs/{preset}"))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Task:
    """A trainable task: how to build its model, its data and its per-phase loss.

    Attributes:
        build_model: ``(model_config, init_from) -> nn.Module`` with ``save_pretrained(folder)``; ``init_from``
            is a folder / repo id (also the resume checkpoint) or None.
        build_loss: ``(train_config, phase) -> loss_fn`` where ``loss_fn(model, batch) -> (loss, logs)`` and
            ``logs["total"]`` is the loss value.
        trainable: ``(model, phase) -> list of parameters`` the phase optimises.
        model_config: ``(train_config) -> model_config`` that :func:`~perchead.training.train.train` passes to
            ``build_model`` when none is given (None: ``PercHeadConfig.preset(train_config.preset)``).
        build_dataset: ``(train_config, model) -> dataset`` of sample dicts (None: the multi-view or
            synthetic-heads dataset of :func:`perchead.training.train.build_dataset`).
        param_groups: ``(model, params, train_config) -> AdamW parameter groups`` (None: one group).
        after_step: ``(model) -> None`` run after every optimiser step (e.g. clamping CLIP's logit scale).
        finish: ``(model, train_config, output folder, step records) -> None`` after the final weights are
            saved (e.g. validation and ``training.json``).
    """

    build_model: Callable[[Any, str | None], nn.Module]
    build_loss: Callable[[TrainConfig, int], LossFn]
    trainable: Callable[[nn.Module, int], list[nn.Parameter]]
    model_config: Callable[[TrainConfig], Any] | None = None
    build_dataset: Callable[[TrainConfig, nn.Module], Any] | None = None
    param_groups: Callable[[nn.Module, list[nn.Parameter], TrainConfig], list[dict[str, Any]]] | None = None
    after_step: Callable[[nn.Module], None] | None = None
    finish: Callable[[nn.Module, TrainConfig, Path, list[dict[str, Any]]], None] | None = None


def process_seed(seed: int) -> int:
    """The seed of a loss's own random draws (augmentation) in this process: ``seed`` on one process and on
    rank 0, offset on the other ranks of a data-parallel run, so that the processes augment their shares of
    the batch independently rather than all alike."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return seed + 1_000_003 * rank


def all_parameters(model: nn.Module, phase: int) -> list[nn.Parameter]:
    """Every parameter, in every phase (tasks with one phase)."""
    return list(model.parameters())


def task_options(config: TrainConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """``config.options`` over a task's defaults.

    Raises:
        ValueError: on an option the task does not have.
    """
    unknown = set(config.options) - set(defaults)
    if unknown:
        raise ValueError(f"task {config.task!r} has no option(s) {sorted(unknown)}; it has {sorted(defaults)}")
    return {**defaults, **config.options}
