"""Mixing several training sources with ratios (paper §3.4: NeRSemble + Cafca + FFHQ blend).

Two equivalent tools: :class:`MixedDataset`, a map-style dataset whose item ``i`` comes from source ``k``
with probability ``weight_k / sum(weights)`` (deterministic per index and seed), and
:func:`weighted_sampler`, a :class:`~torch.utils.data.WeightedRandomSampler` over a ``ConcatDataset``.
All sources must produce the same sample shapes (same ``image_size`` and ``n_targets``) to be batched.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, WeightedRandomSampler


def _check(sources: Sequence[tuple[Dataset, float]]) -> tuple[list[Dataset], np.ndarray]:
    if not sources:
        raise ValueError("need at least one (dataset, weight) pair")
    datasets, weights = [], []
    for i, item in enumerate(sources):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"source {i} must be a (dataset, weight) pair, got {item!r}")
        ds, w = item
        if len(ds) == 0:
            raise ValueError(f"source {i} ({type(ds).__name__}) is empty")
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"source {i} weight must be finite and non-negative, got {w}")
        datasets.append(ds)
        weights.append(float(w))
    p = np.asarray(weights)
    if p.sum() <= 0:
        raise ValueError("weights sum to zero")
    return datasets, p / p.sum()


class MixedDataset(Dataset):
    """Draws each item from one of several datasets with the given ratios.

    Args:
        sources: ``[(dataset, weight), ...]``; weights are relative.
        length: items per epoch (default: the sum of the source lengths).
        seed: item ``i`` is a deterministic function of ``(seed, i)``; change it per epoch for new draws
            (:meth:`set_epoch`).

    Raises:
        ValueError: on empty sources or bad weights.
    """

    def __init__(self, sources: Sequence[tuple[Dataset, float]], length: int | None = None, seed: int = 0):
        self.datasets, self.probs = _check(sources)
        self.length = int(length) if length is not None else sum(len(d) for d in self.datasets)
        if self.length <= 0:
            raise ValueError(f"length must be positive, got {self.length}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles which source and item every index maps to."""
        self.epoch = epoch

    def source_of(self, index: int) -> tuple[int, int]:
        """(source number, index inside that source) of mixed item ``index``."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.choice(len(self.datasets), p=self.probs))
        return k, int(rng.integers(len(self.datasets[k])))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        k, j = self.source_of(index)
        return self.datasets[k][j]


def weighted_sampler(sources: Sequence[tuple[Dataset, float]], num_samples: int,
                     generator: torch.Generator | None = None) -> tuple[ConcatDataset, WeightedRandomSampler]:
    """A concatenated dataset and a sampler drawing its sources with the given ratios.

    Each item of source ``k`` gets weight ``w_k / len(source_k)``, so a source's share of the draws is
    ``w_k / sum(w)`` whatever its size.

    Returns:
        (ConcatDataset, WeightedRandomSampler) — pass both to a DataLoader (``sampler=``).
    """
    datasets, probs = _check(sources)
    per_item = torch.cat([torch.full((len(d),), float(p) / len(d), dtype=torch.double) for d, p in zip(datasets, probs)])
    return ConcatDataset(datasets), WeightedRandomSampler(per_item, num_samples, replacement=True, generator=generator)
