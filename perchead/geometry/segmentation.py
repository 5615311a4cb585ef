"""The 19-class face segmentation map: class names, one fixed colour palette, label map <-> colour image.

The editing model (paper §3.5, supplement §8) takes a 19-channel one-hot segmentation map as geometry
input; users draw or correct it in the app with a brush fixed to the class colours. This module is the
single place that defines the classes (CelebAMask-HQ order), their colours and every conversion between
a label map, a colour image and a one-hot tensor; parsing a photo into a map is
:mod:`perchead.models.face_parser`'s job.

Palette (ours): the background is WHITE, like every background in this project, so a parsed or rendered
map looks like the image it came from. The 18 face classes are saturated mid-luminance colours (Rec.601
luma 70..215), at least 91 RGB units apart from each other and from white, loosely semantic (skin is
skin-coloured, hair is brown, lips are red and pink). :data:`PALETTE_HEX` gives them as ``"#rrggbb"``
for ``gr.Brush(colors=PALETTE_HEX, color_mode="fixed")``.
"""

from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eyeglasses", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "earring", "necklace", "neck", "cloth",
)  # the 19 CelebAMask-HQ classes, in their usual order
CLASS_LABELS: tuple[str, ...] = (
    "background", "skin", "nose", "glasses", "left eye", "right eye", "left eyebrow", "right eyebrow", "left ear",
    "right ear", "mouth (inside)", "upper lip", "lower lip", "hair", "hat", "earring", "necklace", "neck", "clothes",
)  # the same classes in plain words, for people (the UI's legend)
NUM_CLASSES = len(CLASSES)  # 19
BACKGROUND = 0  # class id of the background
_EXACT = 6.0  # RGB distance below which a colour is its palette class without looking at its neighbours
#              (below the palette's 21.8 minimum distance from any two-colour mix to a third colour)
_OVERSHOOT = 0.15  # a blend may overshoot its two colours by this fraction of their distance (Lanczos ringing)

PALETTE: np.ndarray = np.array(
    [
        [255, 255, 255],   #  0 background  white (the project's background colour)
        [240, 176, 144],   #  1 skin        peach
        [255, 128, 0],     #  2 nose        orange
        [128, 144, 80],    #  3 eyeglasses  olive
        [32, 96, 255],     #  4 l_eye       blue
        [0, 192, 255],     #  5 r_eye       sky blue
        [64, 80, 96],      #  6 l_brow      slate
        [144, 112, 192],   #  7 r_brow      lavender
        [208, 48, 255],    #  8 l_ear       violet
        [255, 0, 192],     #  9 r_ear       magenta
        [144, 32, 112],    # 10 mouth       plum
        [240, 0, 64],      # 11 u_lip       red
        [255, 96, 192],    # 12 l_lip       pink
        [128, 64, 16],     # 13 hair        brown
        [0, 160, 48],      # 14 hat         green
        [255, 224, 0],     # 15 earring     yellow
        [0, 240, 144],     # 16 necklace    mint
        [208, 96, 96],     # 17 neck        terracotta
        [96, 32, 208],     # 18 cloth       indigo
    ],
    dtype=np.uint8,
)  # [19, 3] ours; min pairwise RGB distance 91
PALETTE.setflags(write=False)
PALETTE_HEX: tuple[str, ...] = tuple("#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE.tolist())

_FLIP_PAIRS = (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"))  # u_lip / l_lip are upper / lower
FLIP_PERMUTATION: tuple[int, ...] = tuple(
    CLASSES.index(dict(_FLIP_PAIRS + tuple((b, a) for a, b in _FLIP_PAIRS)).get(n, n)) for n in CLASSES
)  # class id -> class id after a horizontal image flip (l_eye <-> r_eye, l_brow <-> r_brow, l_ear <-> r_ear)


# ------------------------------------------------------------------------------------------------ helpers
def _as_label_tensor(labels: Any) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor or numpy array, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.long()


def _check_range(labels: Tensor, allow_ignore: bool = False) -> None:
    low = -1 if allow_ignore else 0
    bad = (labels < low) | (labels >= NUM_CLASSES)
    if bad.any():
        values = torch.unique(labels[bad])[:8].tolist()
        raise ValueError(f"labels must lie in {low}..{NUM_CLASSES - 1}; found {int(bad.sum())} pixels with values "
                         f"such as {values}")


def legend() -> list[tuple[str, str]]:
    """The legend of the palette.

    Returns:
        ``[(class name, "#rrggbb"), ...]`` in class-id order (19 entries).
    """
    return list(zip(CLASSES, PALETTE_HEX))


def legend_html(columns: int = 4) -> str:
    """An HTML legend (coloured swatch + the class in plain words per entry) for ``gr.HTML`` / ``gr.Markdown``.

    Args:
        columns: entries per row of the grid.

    Returns:
        One ``<div>`` with a CSS grid of 19 entries.
    """
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    items = []
    for i, ((name, hex_color), label) in enumerate(zip(legend(), CLASS_LABELS)):
        swatch = (f'<span style="display:inline-block;width:1em;height:1em;background:{hex_color};'
                  f'border:1px solid #888;vertical-align:middle;margin-right:0.4em"></span>')
        items.append(f'<div title="class {i} ({name}): {hex_color}">{swatch}{html.escape(label)}</div>')
    return (f'<div class="perchead-legend" style="display:grid;grid-template-columns:repeat({columns},auto);'
            f'gap:0.2em 1em;font-size:0.9em">' + "".join(items) + "</div>")


def legend_markdown() -> str:
    """A Markdown table legend (id, swatch, name, hex) for ``gr.Markdown``; swatches are inline HTML."""
    rows = ["| id | colour | class | hex |", "|---:|:---:|:---|:---|"]
    for i, (name, hex_color) in enumerate(legend()):
        swatch = (f'<span style="display:inline-block;width:1.2em;height:1em;background:{hex_color};'
                  f'border:1px solid #888"></span>')
        rows.append(f"| {i} | {swatch} | {name} | `{hex_color}` |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------- labels -> colour
def labels_to_color(labels: Tensor | np.ndarray) -> np.ndarray:
    """Colours a label map with :data:`PALETTE`.

    Args:
        labels: class ids in 0..18. ``[H, W]`` or ``[B, H, W]``, integer tensor or array.

    Returns:
        uint8 RGB image ``[H, W, 3]`` (or ``[B, H, W, 3]``), exactly the palette colours.
    """
    labels = _as_label_tensor(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be [H, W] or [B, H, W], got shape {tuple(labels.shape)}")
    _check_range(labels)
    return PALETTE[labels.cpu().numpy()]  # [(B,) H, W, 3]


def one_hot(labels: Tensor | np.ndarray, num_classes: int = NUM_CLASSES) -> Tensor:
    """19-channel one-hot map, the editing encoder's geometry input (paper §3.5).

    Args:
        labels: class ids ``[H, W]`` or ``[B, H, W]``; -1 (unknown, as in ``target_labels``) gives an
            all-zero vector.
        num_classes: number of channels (19).

    Returns:
        float32 ``[B, num_classes, H, W]`` (B = 1 for an ``[H, W]`` input), on the labels' device.
    """
    labels = _as_label_tensor(labels)
    if labels.ndim == 2:
        labels = labels[None]  # [1, H, W]
    if labels.ndim != 3:
        raise ValueError(f"labels must be [H, W] or [B, H, W], got shape {tuple(labels.shape)}")
    bad = (labels < -1) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"labels must lie in -1..{num_classes - 1}, found values such as "
                         f"{torch.unique(labels[bad])[:8].tolist()}")
    out = F.one_hot(labels.clamp(min=0), num_classes).permute(0, 3, 1, 2).float()  # [B, C, H, W]
    return out * (labels >= 0).unsqueeze(1)  # unknown pixels -> zeros


def mask_iou(a: Tensor, b: Tensor) -> float | None:
    """Intersection over union of two boolean masks of the same shape (views may be stacked).

    Returns:
        the IoU in [0, 1], or None when both masks are empty.

    Raises:
        ValueError: if the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return None if union == 0 else int((a & b).sum()) / union


def resize_labels(labels: Tensor, size: int | Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of a label map (never interpolates classes).

    Args:
        labels: ``[H, W]`` or ``[B, H, W]`` integer class ids.
        size: ``S`` or ``(H, W)`` of the output.

    Returns:
        long tensor ``[h, w]`` or ``[B, h, w]``.
    """
    labels = _as_label_tensor(labels)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    squeeze = labels.ndim == 2
    x = labels[None, None] if squeeze else labels[:, None]  # [B, 1, H, W]
    out = F.interpolate(x.float(), size=(h, w), mode="nearest-exact").long()[:, 0]  # [B, h, w]
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------- colour -> labels
def image_to_rgb(image: Any) -> Tensor:
    """Reads an image in any of the app's formats as float RGB in 0..255, alpha composited over white.

    Args:
        image: a PIL image (any mode), a numpy array ``[H, W]``/``[H, W, 3|4]`` (uint8 0..255 or float
            0..1), a torch tensor ``[3|4, H, W]`` (float 0..1 or uint8) or ``[H, W, 3|4]``, or a Gradio
            ImageEditor value (a dict whose ``"composite"`` entry is one of those).

    Returns:
        float32 ``[H, W, 3]`` in 0..255; transparent pixels take the background colour (white).
    """
    if isinstance(image, dict):
        if image.get("composite") is None:
            raise ValueError("an ImageEditor value needs a 'composite' image")
        image = image["composite"]
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with the project
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        array = image
        x = torch.from_numpy(np.array(array, copy=True))  # copy: PIL arrays are read-only
        if x.ndim == 2:
            x = x[..., None].expand(*x.shape, 3)  # grey -> [H, W, 3]
    elif isinstance(image, Tensor):
        x = image.detach().cpu()
        if x.ndim == 3 and x.shape[0] in (3, 4) and x.shape[-1] not in (3, 4):
            x = x.permute(1, 2, 0)  # [3|4, H, W] -> [H, W, 3|4]
    else:
        raise ValueError(f"unsupported image type {type(image).__name__}; expected PIL, numpy, torch or an "
                         "ImageEditor dict")
    if x.ndim != 3 or x.shape[-1] not in (3, 4):
        raise ValueError(f"image must be RGB or RGBA ([H, W, 3|4] or [3|4, H, W]), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float()  # [H, W, C] 0..255
    elif x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("a float image must lie in [0, 1]")
        x = x.float() * 255.0
    else:
        raise ValueError(f"image dtype must be uint8 or float, got {x.dtype}")
    if x.shape[-1] == 4:
        alpha = x[..., 3:] / 255.0  # [H, W, 1]
        background = _palette_tensor()[BACKGROUND]  # [3]
        x = x[..., :3] * alpha + background * (1.0 - alpha)  # over the background colour
    return x.contiguous()


def _neighbour_classes(labels: Tensor) -> Tensor:
    """Distinct known classes in the 3x3 neighbourhood of every pixel of ``labels`` [H, W] (-1 = unknown).

    Returns:
        [H*W, K] long, each row's distinct classes first, padded with -1; K = the largest count (<= 9).
    """
    h, w = labels.shape
    padded = F.pad(labels[None, None].float(), (1, 1, 1, 1), value=-1.0)  # [1, 1, H+2, W+2]
    neigh = F.unfold(padded, kernel_size=3)[0].T.long()  # [H*W, 9]
    neigh = neigh.sort(1, descending=True).values  # known classes first
    dup = torch.zeros_like(neigh, dtype=torch.bool)
    dup[:, 1:] = neigh[:, 1:] == neigh[:, :-1]
    neigh = torch.where(dup, torch.full_like(neigh, -1), neigh).sort(1, descending=True).values  # [H*W, 9]
    k = max(int((neigh >= 0).sum(1).max()), 1) if len(neigh) else 1
    return neigh[:, :k]  # [H*W, K]


def _resolve_mixes(x: Tensor, classes: Tensor, palette: Tensor) -> tuple[Tensor, Tensor]:
    """Explains colours ``x`` [M, 3] as mixes of one, two or three of the classes ``classes`` [M, K] (-1 pads).

    A mix of two classes is a point on the segment between their colours (a brush's anti-aliased edge), a
    mix of three a point inside their triangle (where three strokes meet).

    Returns:
        labels [M]: the class of the largest mixing weight of the best explanation, and its RGB distance
        [M] (inf where no class is known).
    """
    m, k = classes.shape
    combos = [(i, i, i) for i in range(k)] + [(i, j, j) for i in range(k) for j in range(i + 1, k)]
    combos += [(i, j, l) for i in range(k) for j in range(i + 1, k) for l in range(j + 1, k)]
    idx = torch.tensor(combos, dtype=torch.long)  # [Q, 3]
    abc = classes[:, idx]  # [M, Q, 3] class ids
    valid = (abc >= 0).all(-1)  # [M, Q]
    pa, pb, pc = (palette[abc[..., i].clamp(min=0)] for i in range(3))  # [M, Q, 3] each
    e1, e2, v = pb - pa, pc - pa, x[:, None] - pa  # [M, Q, 3]
    d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)  # [M, Q]
    v1, v2 = (v * e1).sum(-1), (v * e2).sum(-1)
    # segment a-b (also a single point when a == b), extended by the resampling overshoot
    u_seg = (v1 / d11.clamp(min=1e-6)).clamp(-_OVERSHOOT, 1.0 + _OVERSHOOT)  # [M, Q]
    d_seg = (v - u_seg[..., None] * e1).norm(dim=-1)
    # triangle a-b-c: barycentric weights (1-u-w, u, w), only when the projection falls inside
    det = d11 * d22 - d12 * d12
    tri = (d22 > 0) & (det > 1e-3)
    det = torch.where(tri, det, torch.ones_like(det))
    u, w = (d22 * v1 - d12 * v2) / det, (d11 * v2 - d12 * v1) / det  # [M, Q]
    inside = tri & (u >= 0) & (w >= 0) & (u + w <= 1)
    d_tri = (v - u[..., None] * e1 - w[..., None] * e2).norm(dim=-1)  # [M, Q]
    d_tri = torch.where(inside, d_tri, torch.full_like(d_tri, float("inf")))
    use_tri = d_tri < d_seg
    dist = torch.where(use_tri, d_tri, d_seg)  # [M, Q]
    dist = torch.where(valid, dist, torch.full_like(dist, float("inf")))
    weights = torch.where(use_tri[..., None], torch.stack([1 - u - w, u, w], -1),
                          torch.stack([1 - u_seg, u_seg, torch.zeros_like(u_seg)], -1))  # [M, Q, 3]
    best_dist, best = dist.min(1)  # [M]
    pick = best[:, None, None].expand(-1, 1, 3)
    wbest, cbest = weights.gather(1, pick)[:, 0], abc.gather(1, pick)[:, 0]  # [M, 3]
    return cbest.gather(1, wbest.argmax(1, keepdim=True))[:, 0], best_dist


def _resolve_thin(x: Tensor, classes: Tensor, palette: Tensor) -> tuple[Tensor, Tensor]:
    """Explains colours ``x`` [M, 3] as mixes of a neighbour class (``classes`` [M, K]) with ANY palette
    class: a stroke thinner than a pixel has no pure pixel of its own class. The nearer end wins.

    Returns:
        labels [M] and the RGB distance to the best segment [M] (inf where no class is known).
    """
    pa = palette[classes.clamp(min=0)][:, :, None]  # [M, K, 1, 3]
    seg = palette[None, None] - pa  # [M, K, 19, 3]
    v = x[:, None, None] - pa  # [M, K, 1, 3]
    t = ((v * seg).sum(-1) / (seg * seg).sum(-1).clamp(min=1e-6)).clamp(-_OVERSHOOT, 1.0 + _OVERSHOOT)  # [M, K, 19]
    dist = (v - t[..., None] * seg).norm(dim=-1)  # [M, K, 19]
    dist = torch.where((classes >= 0)[..., None], dist, torch.full_like(dist, float("inf"))).flatten(1)  # [M, K*19]
    best_dist, best = dist.min(1)  # [M]
    t_best = t.flatten(1).gather(1, best[:, None])[:, 0]  # [M]
    a = classes.gather(1, (best // NUM_CLASSES)[:, None])[:, 0]  # [M]
    return torch.where(t_best < 0.5, a, best % NUM_CLASSES), best_dist


def _compact(classes: Tensor) -> Tensor:
    """Drops the all-padding columns of ``classes`` [M, K] (rows are padded at the end)."""
    k = max(int((classes >= 0).sum(1).max()), 1) if len(classes) else 1
    return classes[:, :k]


def _palette_tensor() -> Tensor:
    return torch.from_numpy(PALETTE.astype(np.float32))  # [19, 3]


def color_to_labels(image: Any, snap: bool = False, size: int | Sequence[int] | None = None,
                    on_size_mismatch: str = "resize", tolerance: float = 24.0, blend_radius: int = 3) -> Tensor:
    """Turns a painted colour map into class labels by nearest palette colour, robust to anti-aliasing.

    1. *Seeds*: pixels within 6 RGB units (0..255 scale) of a palette colour, or inside a same-class region
       (their whole 3x3 neighbourhood within ``tolerance`` of that colour), take that class. Exact palette
       colours therefore round-trip exactly, and JPEG noise inside regions is absorbed.
    2. *Blends*: a brush's anti-aliased edge (or a resampled map) mixes two classes' colours, and such a mix
       can lie close to a THIRD palette colour (a skin/hat mix comes within 22 RGB units of eyeglasses), so the
       plain nearest colour would invent a class that was never painted. Instead every other pixel is
       explained as a mix of the classes already found in its 3x3 neighbourhood: the segment between two
       class colours (or the triangle of three, where strokes meet) nearest to the pixel's colour wins if
       within ``tolerance``, and the pixel takes the class of the largest mixing weight (the nearer end). A
       pixel with no such explanation may be a mix of a neighbour class with any palette class (a stroke
       thinner than a pixel). This runs ``blend_radius`` rounds, each seeing the previous round's labels, so
       soft edges up to that many pixels wide resolve from the outside in; then the remaining near misses
       (within ``tolerance`` of a palette colour) take that colour's class and a second pass of rounds runs.
    3. *Mode filter*: a non-seed pixel whose class appears in none of its 8 neighbours is an isolated speck
       (e.g. where four strokes meet); it takes the most common class of its 3x3 neighbourhood. Seeds are
       never changed, so thin exactly-coloured strokes survive.
    4. *Foreign* pixels (neither a palette colour nor a mix of neighbouring classes, e.g. a photo): a
       ``ValueError`` naming how many pixels and an example colour, unless ``snap=True``, which maps each of
       them to the nearest palette colour (documented, lossy).

    Lossy formats: inside one-class regions JPEG noise is absorbed, but where several very different
    classes meet, chroma subsampling bleeds colours off the blend segments; such maps may need
    ``snap=True`` (or a larger ``tolerance``). Gradio's ImageEditor sends images to the browser as lossy
    WebP by default; use ``gr.ImageEditor(format="png")`` so the map shown for painting keeps its colours.

    Transparency: an RGBA image is composited over the background colour (white) first, so fully
    transparent pixels are background and half-transparent stroke edges become blends with the background.
    Size: with ``size`` given, a map of another size is resized with nearest-neighbour on the LABELS (never
    on colours, which would create blends) or, with ``on_size_mismatch="error"``, refused with a ValueError.

    Args:
        image: the painted map; any format :func:`image_to_rgb` reads (PIL, numpy, torch, RGBA,
            ImageEditor dict). Transparent pixels are background.
        snap: False: foreign colours raise ValueError. True: each foreign pixel takes its nearest palette
            colour's class.
        size: ``S`` or ``(H, W)`` the labels must have; None keeps the image size.
        on_size_mismatch: ``"resize"`` (nearest-neighbour on the labels) or ``"error"`` (ValueError).
        tolerance: RGB distance (0..255 scale) within which a pixel counts as a palette colour, or as a mix
            of two palette colours. Must stay below half the palette's minimum distance (91).
        blend_radius: how many pixels wide a soft edge may be (rounds of blend resolution).

    Returns:
        long tensor ``[H, W]`` of class ids in 0..18.
    """
    if on_size_mismatch not in ("resize", "error"):
        raise ValueError(f"on_size_mismatch must be 'resize' or 'error', got {on_size_mismatch!r}")
    if not 0 < tolerance < 45:
        raise ValueError(f"tolerance must lie in (0, 45) RGB units, got {tolerance}")
    x = image_to_rgb(image)  # [H, W, 3]
    h, w, _ = x.shape
    if size is not None:
        target = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if (h, w) != target and on_size_mismatch == "error":
            raise ValueError(f"segmentation map is {h}x{w} (HxW) but {target[0]}x{target[1]} is required")
    palette = _palette_tensor()  # [19, 3]
    flat = x.reshape(-1, 3)  # [H*W, 3]

    # 1. pure pixels: within tolerance of a palette colour. Seeds are the unambiguous ones: (almost) exact
    #    colours, or the interior of a same-class region; near misses on a thin edge may be blends instead.
    dist = torch.cdist(flat, palette)  # [H*W, 19]
    dmin, nearest = dist.min(1)  # [H*W]
    pure = dmin <= tolerance  # [H*W]
    candidate = torch.where(pure, nearest, torch.full_like(nearest, -1)).reshape(1, 1, h, w).float()
    lo = -F.max_pool2d(-F.pad(candidate, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # 3x3 min
    hi = F.max_pool2d(F.pad(candidate, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # 3x3 max
    interior = ((lo == hi) & (candidate >= 0)).reshape(-1)  # [H*W]
    seed = pure & ((dmin <= _EXACT) | interior)
    labels = torch.where(seed, nearest, torch.full_like(nearest, -1))  # [H*W]

    # 2. blends of the classes next to a pixel, from the seeds outwards; then the remaining near misses
    #    become pure and a second pass resolves the blends around them
    for phase in range(2):
        if phase == 1:
            labels = torch.where((labels < 0) & pure, nearest, labels)
        for _ in range(max(blend_radius, 0)):
            todo = (labels < 0).nonzero()[:, 0]  # [M]
            if len(todo) == 0:
                break
            classes = _neighbour_classes(labels.reshape(h, w))  # [H*W, K]
            todo = todo[(classes[todo] >= 0).any(1)]
            if len(todo) == 0:
                break
            new = labels.clone()
            for chunk in todo.split(16384):  # bounded memory
                lab, d = _resolve_mixes(flat[chunk], _compact(classes[chunk]), palette)
                new[chunk] = torch.where(d <= tolerance, lab, torch.full_like(lab, -1))
            thin = todo[new[todo] < 0]  # no mix of neighbour classes: maybe a sub-pixel stroke
            for chunk in thin.split(16384):
                lab, d = _resolve_thin(flat[chunk], _compact(classes[chunk]), palette)
                new[chunk] = torch.where(d <= tolerance, lab, torch.full_like(lab, -1))
            if torch.equal(new, labels):
                break
            labels = new

    # 3. mode filter: an isolated non-seed pixel (its class in none of its 8 neighbours) takes the 3x3 mode
    blend = ~seed & (labels >= 0)  # [H*W]
    if blend.any():
        padded = F.pad(labels.reshape(1, 1, h, w).float(), (1, 1, 1, 1), value=-1.0)
        neigh = F.unfold(padded, kernel_size=3)[0].T.long()  # [H*W, 9]
        others = torch.cat([neigh[:, :4], neigh[:, 5:]], 1)  # [H*W, 8] without the centre
        isolated = blend & ~(others == labels[:, None]).any(1)
        if isolated.any():
            counts = F.one_hot(neigh[isolated].clamp(min=0), NUM_CLASSES) * (neigh[isolated] >= 0)[..., None]
            labels[isolated] = counts.sum(1).argmax(1)  # [K]

    # 4. foreign colours
    foreign = labels < 0  # [H*W]
    if foreign.any():
        if not snap:
            n = int(foreign.sum())
            i = int(foreign.nonzero()[0, 0])
            example = tuple(int(round(v)) for v in flat[i].tolist())
            raise ValueError(
                f"{n} of {h * w} pixels ({100.0 * n / (h * w):.1f}%) are not segmentation-palette colours nor "
                f"anti-aliased blends of neighbouring palette colours, e.g. RGB {example} at (y={i // w}, "
                f"x={i % w}); paint only with the palette colours (see perchead.geometry.segmentation.legend()), parse a "
                "photo with perchead.models.face_parser.FaceParser, or pass snap=True to map each to its nearest palette colour")
        labels[foreign] = nearest[foreign]
    labels = labels.reshape(h, w)  # [H, W]
    if size is not None and (h, w) != target:
        labels = resize_labels(labels, target)
    return labels
