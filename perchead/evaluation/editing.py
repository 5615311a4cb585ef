"""Disentanglement evaluation of the editing model (PercHead §3.5 / §4.4) on held-out synthetic heads.

    python -m perchead.evaluation.editing --model weights_card --subjects 20 --output edit_results.json \
        --figure docs/editing.png

``--model`` is an editing checkpoint folder with ``edit/``, ``style/`` and ``parser/`` (as
:meth:`perchead.pipelines.edit.PercHeadEditPipeline.from_pretrained` reads). Every input is a ``test`` seed of
:mod:`perchead.data.synthetic` (disjoint from training). The geometry input of a head is its GROUND-TRUTH
label map from the front view (:func:`perchead.data.synthetic.render_head` labels at the editor's input
size, never a parsed one); the styles are the text prompts ``"<c> hair"`` for the hair colours of
:attr:`EditEvalConfig.colors` (plus optional extra prompts) and reference images = front renders of other
test heads (the seeds right after the evaluated ones). Every (map, style) edit goes through the app's
entry point :class:`~perchead.pipelines.edit.PercHeadEditPipeline` and is rendered (with the refiner) from
:attr:`EditEvalConfig.views` (front, ¾, profile).

Metrics (:func:`evaluate_edit`): geometry kept across styles (silhouette IoU, depth, parsed-label IoU),
style kept across maps (hair and skin colours), and hair-colour prompts against the synthetic albedos.

Output: JSON ``{"geometry": …, "style": …, "hair_color": …, "meta": …}``, a Markdown summary on stdout and
optionally a PNG (rows = test maps; columns = the map, front renders with each prompt, the reference image
and the render styled by it).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.data.figures import save_labelled_grid
from perchead.evaluation.metrics import class_mean_color, label_iou
from perchead.evaluation.reconstruction import write_results
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.segmentation import BACKGROUND, mask_iou, resize_labels

if TYPE_CHECKING:
    from perchead.data.synthetic import SyntheticHead
    from perchead.pipelines.edit import PercHeadEditPipeline

HAIR, SKIN = 13, 1  # CelebAMask-HQ class ids (perchead.geometry.segmentation.CLASSES)
COLOR_CLASSES = {"hair": HAIR, "skin": SKIN}
DEFAULT_COLORS = ("black", "brown", "blonde", "red", "grey", "white", "blue", "pink", "green", "purple")  # "<c> hair"
DEFAULT_VIEWS = (("front", 0.0, 0.0), ("three_quarter", 45.0, 0.0), ("profile", 90.0, 0.0))  # (name, az, el)
MIN_PIXELS = 10  # a colour region with fewer pixels counts as absent


@dataclass
class EditEvalConfig:
    """Editing evaluation settings.

    Attributes:
        subjects: held-out heads whose maps are edited (the first ``subjects`` seeds of the split).
        split: seed split of :mod:`perchead.data.synthetic` ("test" for the reported numbers).
        colors: hair colours (keys of ``HAIR_COLORS``) of the prompts ``"<c> hair"`` (metrics 1–3).
        extra_prompts: further text styles (metrics 1–2 only), e.g. ``"bald with glasses"``.
        references: reference-image styles: front renders of the split's seeds right after the subjects.
        reference_view: (azimuth, elevation) of the reference images, degrees.
        views: (name, azimuth, elevation) of the evaluation renders; the first must be the front view
            (0°, 0°) — the input map's view, used for the map-region colours.
        eval_size: render side (None = the editor's input size, the size of the maps).
        erode: pixels eroded from the input map's hair / skin regions before taking mean colours (ours: 1).
        figure_rows: test maps shown in the figure.
    """

    subjects: int = 20
    split: str = "test"
    colors: tuple[str, ...] = DEFAULT_COLORS
    extra_prompts: tuple[str, ...] = ()
    references: int = 2
    reference_view: tuple[float, float] = (0.0, 0.0)
    views: tuple[tuple[str, float, float], ...] = DEFAULT_VIEWS
    eval_size: int | None = None
    erode: int = 1
    figure_rows: int = 4

    def __post_init__(self) -> None:
        from perchead.data.synthetic import HAIR_COLORS

        self.colors = tuple(self.colors)
        self.extra_prompts = tuple(p.strip() for p in self.extra_prompts if p and p.strip())
        self.views = tuple((str(n), float(a), float(e)) for n, a, e in self.views)
        self.reference_view = (float(self.reference_view[0]), float(self.reference_view[1]))
        if self.subjects < 2:
            raise ValueError(f"subjects must be >= 2 (colours are compared across maps), got {self.subjects}")
        unknown = [c for c in self.colors if c not in HAIR_COLORS]
        if unknown:
            raise ValueError(f"unknown hair colours {unknown}; choose from {sorted(HAIR_COLORS)}")
        if len(set(self.colors)) < 2:
            raise ValueError(f"need at least 2 distinct hair colours to compare prompts, got {list(self.colors)}")
        if self.references < 0:
            raise ValueError(f"references must be >= 0, got {self.references}")
        if not self.views or self.views[0][1:] != (0.0, 0.0):
            raise ValueError(f"the first view must be the front view (0, 0) of the input map, got {self.views[:1]}")
        if self.erode < 0:
            raise ValueError(f"erode must be >= 0, got {self.erode}")
        if self.eval_size is not None and self.eval_size < 8:
            raise ValueError(f"eval_size must be at least 8, got {self.eval_size}")

    @property
    def prompts(self) -> list[str]:
        """The text styles: the hair-colour prompts, then the extra prompts."""
        return [f"{c} hair" for c in self.colors] + [p for p in self.extra_prompts]


@dataclass
class Style:
    """One style input: a prompt or a reference image."""

    name: str  # "red hair" or "reference 2000020"
    text: str | None = None
    image: Tensor | None = None  # [3, S, S] in [0, 1], framed like the model's inputs


@dataclass
class EditRender:
    """Renders of one edit from the evaluation views.

    Attributes:
        rgb: ``[V, 3, H, W]`` refined renders over white.
        silhouette: ``[V, H, W]`` bool, alpha > 0.5.
        depth: ``[V, H, W]`` expected camera-z depth in metres (0 outside the silhouette).
        parsed: ``[V, H, W]`` long, the face parser's labels (background outside the silhouette).
    """

    rgb: Tensor
    silhouette: Tensor
    depth: Tensor
    parsed: Tensor


# --------------------------------------------------------------------------------------------- metric helpers
def silhouette_iou(a: Tensor, b: Tensor) -> float:
    """IoU of two boolean masks of the same shape (views may be stacked). 1.0 when both are empty."""
    iou = mask_iou(a, b)
    return 1.0 if iou is None else iou


def depth_difference(depth_a: Tensor, sil_a: Tensor, depth_b: Tensor, sil_b: Tensor) -> float | None:
    """Mean absolute depth difference (metres) where both silhouettes cover; None when they never overlap."""
    both = sil_a.bool() & sil_b.bool()
    if not both.any():
        return None
    return float((depth_a[both] - depth_b[both]).abs().mean())


def color_distance(a: Tensor, b: Tensor) -> float:
    """Euclidean distance of two RGB colours ``[3]`` in [0, 1] (0 … √3)."""
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    if a.shape != (3,) or b.shape != (3,):
        raise ValueError(f"colours must be [3] RGB, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).norm())


def region_mean_color(rgb: Tensor, region: Tensor, silhouette: Tensor | None = None, erode: int = 1,
                      min_pixels: int = MIN_PIXELS) -> Tensor | None:
    """Mean colour of an image inside a region, eroded to stay clear of boundaries.

    Args:
        rgb: ``[3, H, W]`` in [0, 1].
        region: ``[H, W]`` bool (e.g. the input map's hair pixels).
        silhouette: optional ``[H, W]`` bool; pixels outside it are not counted (white background).
        erode: pixels removed from the region's border (square structuring element).
        min_pixels: fewer remaining pixels → None.

    Returns:
        ``[3]`` mean RGB, or None when the region is (almost) empty.
    """
    if rgb.dim() != 3 or rgb.shape[0] != 3 or region.shape != rgb.shape[1:]:
        raise ValueError(f"rgb must be [3, H, W] and region [H, W], got {tuple(rgb.shape)} and {tuple(region.shape)}")
    mask = region.bool()
    if erode > 0:
        k = 2 * erode + 1
        outside = (~mask).float()[None, None]  # [1, 1, H, W]
        mask = F.max_pool2d(outside, k, stride=1, padding=erode)[0, 0] < 0.5  # erosion = not dilated outside
    if silhouette is not None:
        mask = mask & silhouette.bool()
    if int(mask.sum()) < min_pixels:
        return None
    return rgb[:, mask].mean(dim=1)  # [3]


def mean_pairwise(items: Sequence, fn: Callable[[Any, Any], float | None]) -> float | None:
    """Mean of ``fn(x, y)`` over unordered pairs of non-None items; None results and items are skipped."""
    values = [v for x, y in itertools.combinations([i for i in items if i is not None], 2)
              if (v := fn(x, y)) is not None]
    return sum(values) / len(values) if values else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _mean_color(colors: Sequence[Tensor | None]) -> list[float] | None:
    kept = [c for c in colors if c is not None]
    return torch.stack(kept).mean(0).tolist() if kept else None


def color_consistency(colors: Sequence[Sequence[Tensor | None]]) -> dict[str, float | None]:
    """Colour distances of edits grouped by style (metric 2).

    Args:
        colors: ``colors[s][i]`` = mean colour ``[3]`` of style s applied to map i (None = absent).

    Returns:
        ``same_style_across_maps`` (s = t, i ≠ j), ``different_styles_across_maps`` (s ≠ t, i ≠ j),
        ``different_styles_same_map`` (s ≠ t, i = j), and ``ratio`` = different / same across maps.
    """
    same, diff_maps, diff_same = [], [], []
    n_styles = len(colors)
    for s, t in itertools.product(range(n_styles), repeat=2):
        if t < s:
            continue
        for i, a in enumerate(colors[s]):
            for j, b in enumerate(colors[t]):
                if a is None or b is None or (s == t and j <= i):
                    continue
                d = color_distance(a, b)
                if s == t:
                    same.append(d)
                elif i != j:
                    diff_maps.append(d)
                else:
                    diff_same.append(d)
    out = {"same_style_across_maps": _mean(same), "different_styles_across_maps": _mean(diff_maps),
           "different_styles_same_map": _mean(diff_same)}
    a, b = out["different_styles_across_maps"], out["same_style_across_maps"]
    out["ratio"] = a / b if a is not None and b else None
    return out


def hair_color_scores(hair: dict[str, Sequence[Tensor | None]],
                      targets: dict[str, Sequence[Tensor | None]] | None = None) -> dict[str, Any]:
    """How far each hair-colour prompt moves the hair toward its colour (metric 3).

    Args:
        hair: colour name (a ``HAIR_COLORS`` key) → per-head rendered hair colour ``[3]`` with the prompt
            ``"<c> hair"`` (None where the head has no hair); every list has one entry per head.
        targets: colour name → per-head target colour ``[3]`` (e.g. the ground-truth render of that head
            with its hair repainted in that colour), or None for the albedos ``HAIR_COLORS[c]`` for every head.

    Returns:
        ``per_color[c]`` = ``target`` (mean over heads), ``mean_rgb``, ``matching_distance``,
        ``other_prompts_distance``, ``nearest_fraction``, ``heads``; and the means over colours of the three
        scores, ``chance`` and ``heads`` (heads with hair in every render).
    """
    from perchead.data.synthetic import HAIR_COLORS

    names = list(hair)
    if len(names) < 2:
        raise ValueError(f"need at least 2 hair-colour prompts, got {names}")
    unknown = [c for c in names if c not in HAIR_COLORS]
    if unknown:
        raise ValueError(f"unknown hair colours {unknown}; choose from {sorted(HAIR_COLORS)}")
    n = {len(v) for v in hair.values()}
    if len(n) != 1:
        raise ValueError(f"every colour needs one entry per head, got lengths {sorted(n)}")
    n_heads = n.pop()
    if targets is None:
        targets = {c: [torch.tensor(HAIR_COLORS[c], dtype=torch.float32)] * n_heads for c in names}
    elif set(targets) != set(names) or any(len(targets[c]) != n_heads for c in names):
        raise ValueError(f"targets need the colours {names} with {n_heads} entries each")
    heads = [i for i in range(n_heads)
             if all(hair[c][i] is not None and targets[c][i] is not None for c in names)]
    per_color: dict[str, Any] = {}
    for c in names:
        t = targets[c]
        matching = [color_distance(hair[c][i], t[i]) for i in heads]
        others = [color_distance(hair[o][i], t[i]) for i in heads for o in names if o != c]
        nearest = [min(names, key=lambda o: color_distance(hair[o][i], t[i])) == c for i in heads]
        per_color[c] = {
            "target": [round(v, 4) for v in torch.stack([t[i] for i in heads]).mean(0).tolist()] if heads else None,
            "mean_rgb": torch.stack([hair[c][i] for i in heads]).mean(0).tolist() if heads else None,
            "matching_distance": _mean(matching),
            "other_prompts_distance": _mean(others),
            "nearest_fraction": sum(nearest) / len(nearest) if nearest else None,
            "heads": len(heads),
        }
    return {
        "per_color": per_color,
        "matching_distance": _mean([v["matching_distance"] for v in per_color.values()]),
        "other_prompts_distance": _mean([v["other_prompts_distance"] for v in per_color.values()]),
        "nearest_fraction": _mean([v["nearest_fraction"] for v in per_color.values()]),
        "chance": 1.0 / len(names),
        "heads": len(heads),
    }


def repainted_hair_colors(head: SyntheticHead, labels: Tensor, rgb: Tensor, colors: Sequence[str], erode: int = 1
                          ) -> dict[str, Tensor | None]:
    """Per-colour rendered targets of one head: its ground-truth render with the hair repainted in each colour.

    Args:
        head: the synthetic head (its attributes name the hair albedo it was rendered with).
        labels: its ground-truth label map ``[S, S]``; rgb: its render ``[3, S, S]`` (:func:`input_map`).
        colors: ``HAIR_COLORS`` keys.
        erode: as :attr:`EditEvalConfig.erode`.

    Returns:
        colour → mean repainted hair colour ``[3]`` in the map's eroded hair region, None for a bald head.
    """
    from perchead.data.augment import recolor_hair
    from perchead.data.synthetic import HAIR_COLORS

    old = head.attributes.get("hair_color")
    if old is None or head.attributes.get("hair_style") == "bald":
        return {c: None for c in colors}
    hair, inside = labels == COLOR_CLASSES["hair"], labels != BACKGROUND  # [S, S] ×2
    out: dict[str, Tensor | None] = {}
    for c in colors:
        image = recolor_hair(rgb[None, None], labels[None, None], torch.tensor([HAIR_COLORS[old]]),
                             torch.tensor([HAIR_COLORS[c]]))[0, 0]  # [3, S, S]
        out[c] = region_mean_color(image, hair, inside, erode=erode)
    return out


# --------------------------------------------------------------------------------------------- inputs + edits
def input_map(head: SyntheticHead, pipeline: PercHeadEditPipeline, view: tuple[float, float] = (0.0, 0.0)
              ) -> tuple[Tensor, Tensor]:
    """The ground-truth label map (geometry input) and the colour render of a synthetic head.

    Args:
        head: from :func:`perchead.data.synthetic.make_head`.
        pipeline: supplies the editor's framing and input size S.
        view: (azimuth, elevation) in degrees.

    Returns:
        (labels ``[S, S]`` long, rgb ``[3, S, S]`` over white).
    """
    from perchead.data.synthetic import render_head

    cams = pipeline.editor.default_cameras([view[0]], [view[1]], size=pipeline.image_size)
    out = render_head(head, cams)
    return out["labels"][0].cpu(), out["rgb"][0].float().cpu()


@torch.no_grad()
def render_edit(pipeline: PercHeadEditPipeline, labels: Tensor, style: Style, views: Sequence[tuple[str, float, float]],
                size: int) -> EditRender:
    """Edits one map with one style through :class:`PercHeadEditPipeline` and renders + parses the result.

    Args:
        pipeline: the editing pipeline.
        labels: ``[S, S]`` input map.
        style: the style input.
        views: (name, azimuth, elevation) of the renders.
        size: render side.

    Returns:
        :class:`EditRender` (on the CPU).
    """
    result = pipeline(labels, style_text=style.text, style_image=style.image)
    cams = pipeline.editor.default_cameras([v[1] for v in views], [v[2] for v in views], size=size)
    out = pipeline.editor.render_views(result.gaussians.to(pipeline.device), cams, return_depth=True)
    if out.depth is None:
        raise ValueError(f"render backend {pipeline.editor.config.render.backend!r} returned no depth")
    rgb = out.rgb[0].float().clamp(0, 1)  # [V, 3, H, W]
    alpha = out.alpha[0].float()  # [V, 1, H, W]
    silhouette = alpha[:, 0] > 0.5  # [V, H, W]
    depth = torch.where(silhouette, out.depth[0, :, 0].float() / alpha[:, 0].clamp_min(1e-6),
                        torch.zeros_like(alpha[:, 0]))  # [V, H, W] expected depth
    parsed = pipeline.parser.parse(rgb, mask=alpha)  # [V, H, W]
    return EditRender(rgb=rgb.cpu(), silhouette=silhouette.cpu(), depth=depth.cpu(), parsed=parsed.long().cpu())


def map_region_colors(render: EditRender, labels: Tensor, erode: int = 1) -> dict[str, Tensor | None]:
    """Hair and skin mean colours of the front render inside the input map's eroded regions (metric 2)."""
    size = render.rgb.shape[-1]
    if labels.shape[-1] != size:
        labels = resize_labels(labels, size)  # [H, W]
    return {name: region_mean_color(render.rgb[0], labels == c, render.silhouette[0], erode=erode)
            for name, c in COLOR_CLASSES.items()}


def parsed_colors(render: EditRender) -> dict[str, Tensor | None]:
    """Hair and skin mean colours over the parsed renders of all views (metric 2, secondary)."""
    return {name: class_mean_color(render.rgb, render.parsed, c) for name, c in COLOR_CLASSES.items()}


# --------------------------------------------------------------------------------------------- evaluation
def evaluate_edit(pipeline: PercHeadEditPipeline, config: EditEvalConfig, figure_path: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Runs the three metrics on held-out synthetic heads.

    Metrics (all colours RGB in [0, 1], distances Euclidean, so 0 … √3):

    1. **Geometry kept across styles** (same map, every pair of different styles, all views stacked):
       ``silhouette_iou`` — IoU of the render silhouettes (alpha > 0.5): GEOMETRY ONLY, independent of the
       parser; ``depth_mm`` — mean |Δ expected depth| in mm where both silhouettes cover (geometry only);
       ``parsed_iou`` — :func:`~perchead.evaluation.metrics.label_iou` (mean over the 18 non-background classes)
       of the face parser's label maps of the renders: class layout, but it also depends on the parser.
       References: ``across_maps`` = the same numbers for the SAME style on DIFFERENT maps (what IoU looks like
       when the geometry really changes); ``input_fidelity`` = front render vs. the input map.
    2. **Style kept across maps**: hair (13) and skin (1) mean colours of each edit, measured primarily
       (``map_region``) on the front render inside the INPUT map's class region, eroded by
       :attr:`EditEvalConfig.erode` px and cut to the render's silhouette — it needs no parser, and the map is
       exact ground truth, so a parser that misreads an unusual colour cannot bias it (our choice as the most
       robust; it assumes the geometry is kept, which metric 1 checks). Secondary (``parsed``):
       :func:`~perchead.evaluation.metrics.class_mean_color` on the parsed renders of all views. Reported:
       ``same_style_across_maps`` (same style, different maps), ``different_styles_across_maps`` (different
       styles, different maps) and ``different_styles_same_map``; disentangled styles give
       ``different_styles_across_maps`` > ``same_style_across_maps`` (``ratio`` > 1).
    3. **Hair-colour prompts**: for every colour c, ``matching_distance`` = mean distance of the hair colour
       rendered with the prompt "<c> hair" to the synthetic albedo ``HAIR_COLORS[c]``; ``other_prompts_distance``
       = the same distance for the renders of the other colour prompts; ``nearest_fraction`` = fraction of
       heads whose render with "<c> hair" is, among the renders of all colour prompts, the nearest to
       ``HAIR_COLORS[c]`` (chance = 1 / number of colours). Heads whose map has no hair (bald) are skipped.
       The albedos are not what a render shows: shading darkens it, so a lighter wrong colour can lie
       nearer the albedo than the right one (ground-truth renders repainted in each colour score only 0.70 on
       ten colours: blonde, grey and pink lose to white, red and brown). ``hair_color_rendered`` therefore
       scores against per-head RENDERED targets: the head's own ground-truth front render with its hair
       repainted in c (:func:`perchead.data.augment.recolor_hair`, albedo × the render's shading), measured
       in the same map region; ``hair_color_ceiling`` is the albedo score of those repainted renders.

    Args:
        pipeline: an :class:`~perchead.pipelines.edit.PercHeadEditPipeline`.
        config: evaluation settings.
        figure_path: optional PNG path for :func:`editing_figure`.
        progress: show a tqdm bar.

    Returns:
        ``{"geometry": …, "style": …, "hair_color": …, "meta": …}`` (JSON-ready).
    """
    from tqdm.auto import tqdm

    from perchead.data.synthetic import make_head, split_seeds

    seeds = split_seeds(config.split)
    if config.subjects + config.references > len(seeds):
        raise ValueError(f"split {config.split!r} has {len(seeds)} subjects; asked for {config.subjects} maps "
                         f"+ {config.references} references")
    size = config.eval_size or pipeline.image_size
    view_names = [v[0] for v in config.views]
    # 1. styles: prompts, then reference images (front renders of the test heads after the evaluated ones)
    styles = [Style(name=p, text=p) for p in config.prompts]
    for k in range(config.references):
        seed = seeds[config.subjects + k]
        _, image = input_map(make_head(seed), pipeline, config.reference_view)
        styles.append(Style(name=f"reference {seed}", image=image))
    n_styles = len(styles)

    geo = {name: {"silhouette_iou": [], "parsed_iou": [], "depth_mm": []} for name in ["all", *view_names]}
    fidelity = {"silhouette_iou": [], "parsed_iou": []}
    silhouettes: list[list[Tensor]] = [[] for _ in styles]  # [style][head] → [V, H, W] bool
    parsed_maps: list[list[Tensor]] = [[] for _ in styles]
    region: dict[str, list[list]] = {name: [[] for _ in styles] for name in COLOR_CLASSES}  # [class][style][head]
    parsed_col: dict[str, list[list]] = {name: [[] for _ in styles] for name in COLOR_CLASSES}
    figure_rows: list[tuple[Tensor, list[Tensor]]] = []
    repainted: dict[str, list[Tensor | None]] = {c: [] for c in config.colors}  # [colour][head] rendered target
    for i in tqdm(range(config.subjects), disable=not progress, desc="evaluate_edit", dynamic_ncols=True):
        head = make_head(seeds[i])
        labels, truth = input_map(head, pipeline)  # [S, S], [3, S, S]
        for c, color in repainted_hair_colors(head, labels, truth, config.colors, config.erode).items():
            repainted[c].append(color)
        eval_labels = labels if labels.shape[-1] == size else resize_labels(labels, size)  # [H, W]
        renders = [render_edit(pipeline, labels, style, config.views, size) for style in styles]
        # 2. geometry across styles of this map, per view and over all views
        for a, b in itertools.combinations(renders, 2):
            for v, name in [(slice(None), "all"), *((slice(k, k + 1), n) for k, n in enumerate(view_names))]:
                geo[name]["silhouette_iou"].append(silhouette_iou(a.silhouette[v], b.silhouette[v]))
                geo[name]["parsed_iou"].append(label_iou(a.parsed[v], b.parsed[v]))
                d = depth_difference(a.depth[v], a.silhouette[v], b.depth[v], b.silhouette[v])
                geo[name]["depth_mm"].append(None if d is None else 1000.0 * d)
        for s, r in enumerate(renders):
            fidelity["silhouette_iou"].append(silhouette_iou(r.silhouette[0], eval_labels != BACKGROUND))
            fidelity["parsed_iou"].append(label_iou(r.parsed[0], eval_labels))
            silhouettes[s].append(r.silhouette)
            parsed_maps[s].append(r.parsed.to(torch.uint8))
            for name, color in map_region_colors(r, labels, config.erode).items():
                region[name][s].append(color)
            for name, color in parsed_colors(r).items():
                parsed_col[name][s].append(color)
        if i < config.figure_rows:
            figure_rows.append((labels, [r.rgb[0] for r in renders]))

    # 3. reduce
    across_maps = {
        "silhouette_iou": _mean([mean_pairwise(silhouettes[s], silhouette_iou) for s in range(n_styles)]),
        "parsed_iou": _mean([mean_pairwise(parsed_maps[s], lambda a, b: label_iou(a.long(), b.long()))
                             for s in range(n_styles)]),
    }
    geometry = {key: _mean(geo["all"][key]) for key in ("silhouette_iou", "parsed_iou", "depth_mm")}
    geometry["per_view"] = {name: {key: _mean(vals) for key, vals in geo[name].items()} for name in view_names}
    geometry["across_maps"] = across_maps
    geometry["input_fidelity"] = {key: _mean(vals) for key, vals in fidelity.items()}
    geometry["style_pairs_per_map"] = n_styles * (n_styles - 1) // 2
    style = {
        "map_region": {name: color_consistency(region[name]) for name in COLOR_CLASSES},
        "parsed": {name: color_consistency(parsed_col[name]) for name in COLOR_CLASSES},
        "per_style": {st.name: {f"{name}_rgb": _mean_color(region[name][s]) for name in COLOR_CLASSES}
                      for s, st in enumerate(styles)},
    }
    prompted = {c: region["hair"][k] for k, c in enumerate(config.colors)}
    results: dict[str, Any] = {
        "geometry": geometry,
        "style": style,
        "hair_color": hair_color_scores(prompted),
        "hair_color_rendered": hair_color_scores(prompted, targets=repainted),
        "hair_color_ceiling": hair_color_scores(repainted),
        "meta": {
            "config": asdict(config),
            "styles": [{"name": st.name, "kind": "text" if st.text is not None else "image"} for st in styles],
            "eval_size": size,
            "input_size": pipeline.image_size,
            "seeds": [int(seeds[i]) for i in range(config.subjects)],
            "definitions": {
                "silhouette_iou": "IoU of render silhouettes (alpha > 0.5), geometry only (no parser)",
                "depth_mm": "mean |expected depth difference| in mm where both silhouettes cover (geometry only)",
                "parsed_iou": "mean per-class IoU of the face parser's maps of the renders (depends on the parser)",
                "across_maps": "same style on different maps (reference: geometry that really changes)",
                "input_fidelity": "front render vs. the input map (silhouette; parsed classes)",
                "map_region": f"mean colour of the front render inside the input map's class region eroded by "
                              f"{config.erode} px and cut to the silhouette (primary; no parser)",
                "parsed": "class_mean_color of the parsed renders over all views (secondary; depends on the parser)",
                "color_distance": "Euclidean RGB distance, channels in [0, 1]",
                "hair_color": "distance of the rendered hair (map region) to HAIR_COLORS albedo targets",
                "hair_color_rendered": "the same against each head's ground-truth front render with its hair "
                                       "repainted in the prompted colour (same region)",
                "hair_color_ceiling": "the albedo score of those repainted ground-truth renders",
            },
        },
    }
    if figure_path:
        editing_figure(figure_rows, styles, figure_path)
        results["meta"]["figure"] = str(figure_path)
    return results


# --------------------------------------------------------------------------------------------- summary + figure
def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_summary(results: dict[str, Any]) -> str:
    """Three Markdown tables: geometry across styles, colour consistency, hair-colour prompts."""
    g = results["geometry"]
    lines = ["| Geometry kept across styles (same map) | silhouette IoU ↑ | depth Δ mm ↓ | parsed IoU ↑ |",
             "|---|---|---|---|",
             f"| all views | {_fmt(g['silhouette_iou'])} | {_fmt(g['depth_mm'], 2)} | {_fmt(g['parsed_iou'])} |"]
    for name, v in g["per_view"].items():
        lines.append(f"| {name} | {_fmt(v['silhouette_iou'])} | {_fmt(v['depth_mm'], 2)} | {_fmt(v['parsed_iou'])} |")
    a, f = g["across_maps"], g["input_fidelity"]
    lines += [f"| reference: same style, different maps | {_fmt(a['silhouette_iou'])} | | {_fmt(a['parsed_iou'])} |",
              f"| front render vs. input map | {_fmt(f['silhouette_iou'])} | | {_fmt(f['parsed_iou'])} |", ""]
    lines += ["| Colour distance (RGB 0–1) | same style, other maps ↓ | other styles, other maps | "
              "other styles, same map | ratio ↑ |", "|---|---|---|---|---|"]
    for method, title in (("map_region", "map region"), ("parsed", "parsed")):
        for name, v in results["style"][method].items():
            lines.append(f"| {name} ({title}) | {_fmt(v['same_style_across_maps'])} | "
                         f"{_fmt(v['different_styles_across_maps'])} | {_fmt(v['different_styles_same_map'])} | "
                         f"{_fmt(v['ratio'], 2)} |")
    for key, title in (("hair_color_rendered", "rendered target RGB (repainted ground truth, mean)"),
                       ("hair_color", "albedo target RGB")):
        if key not in results:
            continue
        h = results[key]
        lines += ["", f"| Prompt | {title} | distance, matching prompt ↓ | distance, other prompts | nearest ↑ |",
                  "|---|---|---|---|---|"]
        for c, v in h["per_color"].items():
            target = ", ".join(f"{x:.2f}" for x in v["target"] or [])
            lines.append(f"| {c} hair | ({target}) | {_fmt(v['matching_distance'])} | "
                         f"{_fmt(v['other_prompts_distance'])} | {_fmt(v['nearest_fraction'], 2)} |")
        lines.append(f"| mean ({h['heads']} heads with hair) | | {_fmt(h['matching_distance'])} | "
                     f"{_fmt(h['other_prompts_distance'])} | {_fmt(h['nearest_fraction'], 2)} "
                     f"(chance {h['chance']:.2f}) |")
    if "hair_color_ceiling" in results:
        lines.append(f"\nalbedo score of the repainted ground truth itself (the albedo score's ceiling): "
                     f"{_fmt(results['hair_color_ceiling']['nearest_fraction'], 2)}")
    return "\n".join(lines)


def editing_figure(rows: Sequence[tuple[Tensor, Sequence[Tensor]]], styles: Sequence[Style],
                   path: str | Path) -> Path:
    """Writes the disentanglement figure: per test map a row of the map, then its front renders per style.

    Args:
        rows: (input map ``[S, S]``, front renders ``[3, H, W]`` in style order) per row.
        styles: the styles (prompt renders first, then reference images; the first reference is shown).
        path: output PNG.

    Returns:
        The path.
    """
    from perchead.geometry.segmentation import labels_to_color

    if not rows:
        raise ValueError("the editing figure needs at least one row")
    size = rows[0][1][0].shape[-1]
    text_idx = [k for k, st in enumerate(styles) if st.text is not None]
    ref_idx = [k for k, st in enumerate(styles) if st.image is not None][:1]
    tiles_rows, header = [], ["map"] + [styles[k].name for k in text_idx]
    if ref_idx:
        header += ["reference", "ref. style"]
    for labels, renders in rows:
        color_map = torch.from_numpy(labels_to_color(resize_labels(labels, size))).permute(2, 0, 1).float() / 255
        tiles = [color_map] + [renders[k] for k in text_idx]
        if ref_idx:
            ref = styles[ref_idx[0]].image
            ref = F.interpolate(ref[None], size=(size, size), mode="bilinear", antialias=True)[0]
            tiles += [ref, renders[ref_idx[0]]]
        tiles_rows.append(torch.cat(tiles, dim=-1))  # [3, S, C·S]
    grid = torch.cat(tiles_rows, dim=-2)  # [3, R·S, C·S]
    return save_labelled_grid(grid, header, size, path)


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict[str, Any]:
    from perchead.pipelines.edit import PercHeadEditPipeline

    p = argparse.ArgumentParser(prog="python -m perchead.evaluation.editing", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights_card", help="folder with edit/, style/ and parser/")
    p.add_argument("--subjects", type=int, default=20, help="held-out test maps")
    p.add_argument("--output", default="edit_results.json", help="JSON results path")
    p.add_argument("--figure", default=None, help="also write the disentanglement figure (PNG) here")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--colors", nargs="+", default=list(DEFAULT_COLORS), help="hair colours of the '<c> hair' prompts")
    p.add_argument("--extra-prompts", nargs="*", default=[], help="further text styles (geometry / style metrics)")
    p.add_argument("--references", type=int, default=2, help="reference-image styles (other test heads)")
    p.add_argument("--eval-size", type=int, default=None, help="render side (default: the editor's input size)")
    p.add_argument("--erode", type=int, default=1, help="pixels eroded from the map's hair / skin regions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    config = EditEvalConfig(subjects=args.subjects, split=args.split, colors=tuple(args.colors),
                            extra_prompts=tuple(args.extra_prompts), references=args.references,
                            eval_size=args.eval_size, erode=args.erode)
    pipeline = PercHeadEditPipeline.from_pretrained(args.model, device=args.device)
    results = evaluate_edit(pipeline, config, figure_path=args.figure, progress=not args.no_progress)
    write_results(results, args.model, args.output, markdown_summary(results))
    return results


# --------------------------------------------------------------------------------- disentanglement probes
@torch.no_grad()
def render_and_parse(pipeline: PercHeadEditPipeline, gaussians: Gaussians, azimuths_deg, elevations_deg=0.0,
                     size: int | None = None) -> tuple[Tensor, Tensor]:
    """Renders a head from several views and parses each render with the pipeline's face parser.

    The editing model's Gaussians carry no classes, so the geometry of an edit is compared through the
    parsed label maps of its renders (the same map with different styles must keep its geometry).

    Args:
        pipeline: supplies the editor (renderer + refiner, framing) and the face parser.
        gaussians: one head (unbatched or a batch of one).
        azimuths_deg, elevations_deg: the views (see :func:`perchead.geometry.cameras.orbit_cameras`).
        size: render side (default: the model size).

    Returns:
        (rgb ``[V, 3, H, W]`` in [0, 1] over white, labels ``[V, H, W]`` long; outside the alpha is background).
    """
    cameras = pipeline.editor.default_cameras(azimuths_deg, elevations_deg, size=size or pipeline.image_size)
    out = pipeline.editor.render_views(gaussians.to(pipeline.device), cameras)
    rgb, alpha = out.rgb[0].float().clamp(0, 1), out.alpha[0].float()  # [V, 3, H, W], [V, 1, H, W]
    labels = pipeline.parser.parse(rgb, mask=alpha)  # [V, H, W]
    return rgb.cpu(), labels.long().cpu()


if __name__ == "__main__":
    main(sys.argv[1:])
