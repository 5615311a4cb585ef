"""Camera-view sampling for training samples: random input views including extreme ones (paper §3.4, §4.1).

The paper stresses robustness under extreme viewpoints (profiles, back-ish views, high / low elevation) and
evaluates on left↔right profile flips and top↔bottom pairs. Input views are therefore drawn from a mixture
of a near-frontal distribution and an *extreme* one; target views always include some extreme views
relative to the input (its mirror across the face plane, and the opposite elevation).
"""

from __future__ import annotations

import numpy as np

EXTREME_INPUTS = ((90.0, 0.0), (-90.0, 0.0), (135.0, 0.0), (-135.0, 0.0), (0.0, 45.0), (0.0, -45.0))  # (azimuth, elevation) degrees


def sample_input_view(rng: np.random.Generator, p_extreme: float = 0.35) -> tuple[float, float]:
    """One input view (azimuth, elevation) in degrees.

    With probability ``1 - p_extreme``: azimuth uniform in [-60, 60], elevation normal (σ = 12°) clipped to
    ±35°. Otherwise one of :data:`EXTREME_INPUTS` (profiles ±90°, back-ish ±135°, elevation ±45°) jittered
    by up to ±10°.
    """
    if rng.random() < p_extreme:
        az, el = EXTREME_INPUTS[int(rng.integers(len(EXTREME_INPUTS)))]
        return float(az + rng.uniform(-10, 10)), float(np.clip(el + rng.uniform(-10, 10), -55, 55))
    return float(rng.uniform(-60, 60)), float(np.clip(rng.normal(0, 12), -35, 35))


def sample_target_views(rng: np.random.Generator, input_view: tuple[float, float], n: int,
                        n_extreme: int = 2) -> list[tuple[float, float]]:
    """``n`` target views (azimuth, elevation); the first ``min(n, n_extreme)`` are extreme w.r.t. the input.

    Extreme targets, in order: the left↔right mirror of the input (azimuth → −azimuth, or the opposite
    profile for a frontal input), then the elevation flip (top↔bottom). The rest are uniform in azimuth
    with elevation uniform in [-40, 50].
    """
    if n < 1:
        raise ValueError(f"need at least one target view, got n={n}")
    az, el = input_view
    extremes = []
    mirror = -az if abs(az) > 20 else (90.0 if rng.random() < 0.5 else -90.0)
    extremes.append((float(mirror + rng.uniform(-5, 5)), float(el)))
    flip_el = -el if abs(el) > 20 else (45.0 if rng.random() < 0.5 else -45.0)
    extremes.append((float(az + rng.uniform(-20, 20)), float(np.clip(flip_el, -60, 60))))
    views = extremes[: min(n, n_extreme)]
    while len(views) < n:
        views.append((float(rng.uniform(-180, 180)), float(rng.uniform(-40, 50))))
    return views
