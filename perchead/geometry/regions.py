"""Per-Gaussian regions of a head (hair, face, ears, neck, clothes …) and the region-by-region assembly of two
heads that share the template's Gaussian order (a reconstruction and an edit of it).

The reconstruction (feed-forward head + photo-fit) and the editing model decode one Gaussian per template
vertex, in the template's order; the photo-fit appends three children for each Gaussian it splits. So
Gaussian ``i < T`` of both heads grew from the same template vertex, and a head can be put together from
the person's Gaussians for some regions and the edit's for others. This module holds the tensor work:

* :func:`split_parents`: the template Gaussian each Gaussian of a fitted head grew from.
* :func:`vote_labels` / :func:`decide_labels`: a class per Gaussian from label maps of several views (a
  Gaussian whose centre is in front of the rendered surface of a view takes that view's label there), the
  template's own labels as a weak prior, and the nearest labelled neighbours for Gaussians no view sees.
* :func:`similarity_transform`: scale, rotation and shift that carry one point set onto another.
* :func:`assemble`: the person's head with the chosen regions replaced by the edit's Gaussians, moved onto
  the person's head and blended into it over a seam band.

Rendering the views belongs to :mod:`perchead.pipelines.restyle`; here everything is given as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from perchead.geometry.gaussians import Gaussians
from perchead.geometry.segmentation import BACKGROUND, CLASSES, NUM_CLASSES

C = {name: i for i, name in enumerate(CLASSES)}
FACE_CLASSES = tuple(C[n] for n in ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip"))
# what a visitor may ask to replace: name → the classes whose Gaussians come from the edit
REGION_SETS: dict[str, tuple[int, ...]] = {
    "hair": (C["hair"], C["hat"]),
    "hair_and_clothes": (C["hair"], C["hat"], C["cloth"], C["necklace"]),
    "all_but_face": tuple(c for c in range(1, NUM_CLASSES) if c not in FACE_CLASSES),
}
# the template's own labels that are worth a prior vote (skin is weak: hair covers much of the template's skin)
PRIOR_WEIGHT_PARTS = 0.5
PRIOR_WEIGHT_SKIN = 0.1
ROTATION_WEIGHT = 1.0  # metres per unit of quaternion distance when a split child's parent is matched (ours)


def region_classes(regions: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The class ids of a region set: a name of :data:`REGION_SETS` or class ids.

    Raises:
        ValueError: an unknown name, or ids outside 1..18.
    """
    if isinstance(regions, str):
        if regions not in REGION_SETS:
            raise ValueError(f"unknown regions {regions!r}; choose one of {', '.join(REGION_SETS)}")
        return REGION_SETS[regions]
    ids = tuple(int(c) for c in regions)
    if not ids or any(not 1 <= c < NUM_CLASSES for c in ids):
        raise ValueError(f"region classes must be ids in 1..{NUM_CLASSES - 1}, got {list(ids)}")
    return ids


def split_parents(gaussians: Gaussians, n_template: int) -> Tensor:
    """The template Gaussian each Gaussian of a (photo-fitted) head grew from.

    The first ``n_template`` Gaussians are the template's, in order. The fit's split
    (:func:`perchead.fit.gaussians.split_gaussians`) puts a parent's four children at ``c ± a ± b`` (the first
    in the parent's place, three appended in three runs over the same k parents), each with the parent's
    rotation (the fit moves positions by a few millimetres and does not change rotations). So the parent of
    the appended run's m-th Gaussian is the template Gaussian at ``child₁ + child₂ − child₃`` of the three runs
    with the same rotation: the nearest by position and rotation together.

    Args:
        gaussians: one head ``[N, …]`` with ``N = n_template + 3k``.
        n_template: T, the template's Gaussian count.

    Returns:
        parent index ``[N]`` long (``i`` for ``i < T``).

    Raises:
        ValueError: a batched head, or N that is not T + 3k.
    """
    if gaussians.is_batched:
        raise ValueError("split_parents takes one unbatched head")
    N = gaussians.num_gaussians
    if N < n_template or (N - n_template) % 3:
        raise ValueError(f"a head of {N} Gaussians is not {n_template} template Gaussians + 3 children per split")
    k = (N - n_template) // 3
    device = gaussians.means.device
    parent = torch.arange(N, device=device)
    if not k:
        return parent
    means = gaussians.means.float()  # [N, 3]
    runs = means[n_template:].view(3, k, 3)  # [3, k, 3] the three appended children of each split
    where = runs[0] + runs[1] - runs[2]  # [k, 3] the first child's place: the parent's slot
    q = gaussians.quats.float()  # [N, 4]
    weight = ROTATION_WEIGHT
    base = torch.cat([means[:n_template], weight * q[:n_template]], dim=1)  # [T, 7]
    query = torch.cat([where, weight * q[n_template : n_template + k]], dim=1)  # [k, 7]
    chosen = torch.empty(k, dtype=torch.long, device=device)
    for start in range(0, k, 1024):  # [1024, T] distances at a time
        chosen[start : start + 1024] = torch.cdist(query[start : start + 1024], base).argmin(dim=1)
    parent[n_template:] = chosen.repeat(3)
    return parent
    q = gaussians.quats.float()  # [N, 4]
    base = q[:n_template]  # [T, 4]
    chosen = torch.empty(k, dtype=torch.long, device=device)
    for start in range(0, k, 1024):  # [1024, T] distances at a time
        rows = q[n_template + start : n_template + min(k, start + 1024)]  # [b, 4]
        chosen[start : start + len(rows)] = torch.cdist(rows, base).argmin(dim=1)
    parent[n_template:] = chosen.repeat(3)
    return parent


def vote_labels(means: Tensor, pixels: Tensor, depths: Tensor, label_maps: Tensor, surface: Tensor,
                weights: Tensor | None = None, tolerance: float = 0.012) -> Tensor:
    """Class votes of each Gaussian from V labelled views: a centre that projects inside a view's silhouette
    and lies no further than ``tolerance`` behind the rendered surface takes that pixel's class.

    Args:
        means: Gaussian centres (unused beyond their count; kept for shape checks). ``[N, 3]``
        pixels: their projections per view (pixel centres at +0.5). ``[V, N, 2]``
        depths: their camera-z per view, metres. ``[V, N]``
        label_maps: the views' class maps. ``[V, H, W]`` long
        surface: the rendered surface depth per view (expected camera-z; 0 or less = empty). ``[V, H, W]``
        weights: a weight per view (default 1). ``[V]``
        tolerance: how far behind the surface a centre still counts as seen, metres.

    Returns:
        votes ``[N, 19]`` (background never voted).
    """
    V, N = depths.shape
    if pixels.shape != (V, N, 2) or means.shape[0] != N:
        raise ValueError(f"pixels must be [V, N, 2] and depths [V, N] for N = {means.shape[0]}, got "
                         f"{tuple(pixels.shape)} and {tuple(depths.shape)}")
    if label_maps.shape[0] != V or surface.shape != label_maps.shape:
        raise ValueError(f"label maps and surfaces must be [V, H, W] for V = {V}, got {tuple(label_maps.shape)} "
                         f"and {tuple(surface.shape)}")
    H, W = label_maps.shape[-2:]
    weights = torch.ones(V, device=means.device) if weights is None else weights.to(means.device).float()
    votes = torch.zeros(N, NUM_CLASSES, device=means.device)  # [N, 19]
    for v in range(V):
        x = pixels[v, :, 0].floor().long()  # [N]
        y = pixels[v, :, 1].floor().long()  # [N]
        inside = (x >= 0) & (x < W) & (y >= 0) & (y < H) & (depths[v] > 0)
        xi, yi = x.clamp(0, W - 1), y.clamp(0, H - 1)
        z = surface[v].to(means.device)[yi, xi]  # [N]
        cls = label_maps[v].to(means.device)[yi, xi]  # [N]
        seen = inside & (z > 0) & (depths[v] <= z + tolerance) & (cls != BACKGROUND)
        votes[seen, cls[seen]] += weights[v]
    return votes


def nearest_labelled(points: Tensor, labelled: Tensor, labels: Tensor, k: int = 8) -> Tensor:
    """The class of each point's ``k`` nearest labelled points, each weighted by its inverse distance.

    Args:
        points: ``[M, 3]``; labelled: ``[L, 3]``; labels: their classes ``[L]`` long.
        k: neighbours that vote.

    Returns:
        ``[M]`` long.
    """
    if not len(points):
        return torch.zeros(0, dtype=torch.long, device=points.device)
    if not len(labelled):
        raise ValueError("no labelled points to take labels from")
    k = min(k, len(labelled))
    out = torch.empty(len(points), dtype=torch.long, device=points.device)
    for start in range(0, len(points), 2048):
        near = torch.cdist(points[start : start + 2048], labelled).topk(k, largest=False)  # [b, k]
        weight = 1.0 / (near.values + 1e-4)  # [b, k] the nearer, the more say
        votes = torch.zeros(len(weight), NUM_CLASSES, device=points.device)  # [b, 19]
        votes.scatter_add_(1, labels[near.indices], weight)
        out[start : start + len(weight)] = votes.argmax(dim=1)
    return out


def template_neighbours(vertices: Tensor, k: int = 8) -> Tensor:
    """Each template vertex's ``k`` nearest vertices, itself first. ``[T, 3]`` → ``[T, k]`` long"""
    k = min(k, len(vertices))
    out = torch.empty(len(vertices), k, dtype=torch.long, device=vertices.device)
    v = vertices.float()
    for start in range(0, len(v), 2048):
        out[start : start + 2048] = torch.cdist(v[start : start + 2048], v).topk(k, largest=False).indices
    return out


def smooth_votes(votes: Tensor, parent: Tensor, neighbours: Tensor, weight: float = 1.0) -> Tensor:
    """Adds to each Gaussian's votes the mean votes of its template neighbourhood (all Gaussians grown from
    those vertices), so one view's stray pixel does not decide a Gaussian alone.

    Args:
        votes: ``[N, 19]``; parent: ``[N]`` long; neighbours: :func:`template_neighbours` ``[T, k]``.
        weight: the neighbourhood's share (0 = no smoothing).

    Returns:
        ``[N, 19]``.
    """
    T, k = neighbours.shape
    per_vertex = torch.zeros(T, votes.shape[1], device=votes.device).index_add_(0, parent, votes)  # [T, 19]
    around = per_vertex[neighbours].sum(dim=1) / k  # [T, 19]
    return votes + weight * around[parent]


def decide_labels(votes: Tensor, means: Tensor, prior: Tensor | None = None, parent: Tensor | None = None) -> Tensor:
    """One class per Gaussian: the views' votes plus the template's labels as a weak prior; Gaussians that no
    view saw take the class of their nearest labelled neighbours.

    Args:
        votes: from :func:`vote_labels`. ``[N, 19]``
        means: Gaussian centres. ``[N, 3]``
        prior: the template's class per template Gaussian (:func:`perchead.geometry.template.template_labels`),
            ``[T]`` long, or None.
        parent: each Gaussian's template parent (:func:`split_parents`), ``[N]`` long; None = the identity.

    Returns:
        ``[N]`` long in 1..18.
    """
    votes = votes.clone()
    N = votes.shape[0]
    seen = votes.sum(dim=1) > 0  # [N]
    if prior is not None:
        parent = torch.arange(N, device=votes.device) if parent is None else parent.to(votes.device)
        p = prior.to(votes.device)[parent]  # [N]
        weight = torch.where(p == C["skin"], PRIOR_WEIGHT_SKIN, PRIOR_WEIGHT_PARTS)  # [N]
        votes[torch.arange(N, device=votes.device), p] += weight
    labels = votes[:, 1:].argmax(dim=1) + 1  # [N] never background
    unseen = ~seen
    if unseen.any() and seen.any():
        labels[unseen] = nearest_labelled(means[unseen].float(), means[seen].float(), labels[seen])
    return labels


def family_labels(labels: Tensor, parent: Tensor, n_template: int) -> Tensor:
    """Gives every Gaussian its family's class: the majority of a template Gaussian and its split children
    (ties go to the template Gaussian's own), so a region takes or leaves a family whole.

    Args:
        labels: ``[N]`` long; parent: ``[N]`` long (:func:`split_parents`); n_template: T.

    Returns:
        ``[N]`` long.
    """
    counts = torch.zeros(n_template, NUM_CLASSES, device=labels.device)  # [T, 19]
    counts.index_put_((parent, labels), torch.ones_like(labels, dtype=counts.dtype), accumulate=True)
    counts[torch.arange(n_template, device=labels.device), labels[:n_template]] += 0.5
    return counts.argmax(dim=1)[parent]


def similarity_transform(src: Tensor, dst: Tensor, weights: Tensor | None = None) -> tuple[float, Tensor, Tensor]:
    """The scale s, rotation R and shift t minimising ``Σ w ‖s R src + t − dst‖²`` (Umeyama).

    Args:
        src, dst: corresponding points ``[M, 3]`` (M ≥ 3).
        weights: ``[M]`` ≥ 0 (default 1).

    Returns:
        (s, R ``[3, 3]`` with det +1, t ``[3]``).
    """
    if src.shape != dst.shape or src.dim() != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise ValueError(f"need two [M, 3] point sets with M >= 3, got {tuple(src.shape)} and {tuple(dst.shape)}")
    src, dst = src.double(), dst.double()
    w = torch.ones(len(src), dtype=torch.float64, device=src.device) if weights is None else weights.double()
    w = w / w.sum().clamp_min(1e-12)
    mu_s, mu_d = (w[:, None] * src).sum(0), (w[:, None] * dst).sum(0)  # [3]
    a, b = src - mu_s, dst - mu_d  # [M, 3]
    cov = (w[:, None] * b).T @ a  # [3, 3]
    U, S, Vh = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=torch.float64, device=src.device)
    if torch.det(U @ Vh) < 0:
        D[2, 2] = -1
    R = U @ D @ Vh
    var = (w * (a**2).sum(1)).sum().clamp_min(1e-12)
    s = float((S * D.diagonal()).sum() / var)
    t = mu_d - s * R @ mu_s
    return s, R.float(), t.float()


@dataclass
class Assembly:
    """What :func:`assemble` returns.

    Attributes:
        gaussians: the assembled head: the person's kept Gaussians, then the edit's. ``[M, …]``
        labels: the class of each assembled Gaussian. ``[M]`` long
        from_edit: which assembled Gaussians came from the edit. ``[M]`` bool
        replaced: which template Gaussians were replaced. ``[T]`` bool
        transform: (scale, rotation ``[3, 3]``, shift ``[3]``) that carried the edit onto the person's head.
        residual: median distance of the face Gaussians after that transform, metres.
    """

    gaussians: Gaussians
    labels: Tensor
    from_edit: Tensor
    replaced: Tensor
    transform: tuple[float, Tensor, Tensor]
    residual: float


def assemble(person: Gaussians, person_labels: Tensor, parent: Tensor, edit: Gaussians, edit_labels: Tensor,
             regions: tuple[int, ...], template_vertices: Tensor, band: float = 0.015, max_pull: float = 0.02,
             covered: Tensor | None = None) -> Assembly:
    """The person's head with ``regions`` replaced by the edit's Gaussians.

    1. A template Gaussian is replaced when either head labels it (or, in the person's head, one of its split
       children) with one of ``regions`` (the edit may grow hair where the person has none, or the reverse);
       the person's Gaussians go with their parent.
    2. The edit is carried onto the person's head by the similarity transform that best maps its kept face
       Gaussians onto the person's (the same template vertices; the fit turned and scaled the person's head).
    3. Seam: a replaced Gaussian whose template vertex lies within ``band`` of a kept one moves toward the
       person's Gaussian of that vertex and takes at least its opacity, by a weight falling from 1 at the
       seam to 0 at ``band``; its colour stays the edit's. So the new region meets the kept face on the
       person's surface, with no gap or ridge at the hairline. Only Gaussians within ``max_pull`` of the
       person's are pulled: one further away is where the edit changed the shape (longer hair), and stays.

    Args:
        person: the reconstructed head ``[N, …]`` (template Gaussians first, then the fit's split children).
        person_labels: its classes ``[N]``.
        parent: the template parent of each of its Gaussians ``[N]`` (:func:`split_parents`).
        edit: the edited head ``[T, …]`` (template order).
        edit_labels: its classes ``[T]``.
        regions: class ids to replace (:func:`region_classes`).
        template_vertices: ``[T, 3]``.
        band: the seam band's width on the template, metres (0 = no blending).
        max_pull: the largest distance between the edit's and the person's Gaussian still pulled, metres.
        covered: template Gaussians to replace whatever their labels (``[T]`` bool), e.g. the person's
            Gaussians seen where a repainted map now has the regions; None = none.

    Returns:
        :class:`Assembly`.

    Raises:
        ValueError: heads that do not share the template (sizes), or fewer than 3 kept face Gaussians.
    """
    T = template_vertices.shape[0]
    if person.is_batched or edit.is_batched:
        raise ValueError("assemble takes unbatched heads")
    if edit.num_gaussians != T or person.num_gaussians < T or parent.shape != (person.num_gaussians,):
        raise ValueError(f"the edit must have the template's {T} Gaussians and the person at least as many with a "
                         f"parent each, got {edit.num_gaussians} and {person.num_gaussians} ({tuple(parent.shape)})")
    device = person.means.device
    regions_t = torch.tensor(regions, device=device)
    person_labels, edit_labels, parent = person_labels.to(device), edit_labels.to(device), parent.to(device)
    replaced = torch.isin(edit_labels, regions_t)  # [T]
    replaced[parent[torch.isin(person_labels, regions_t)]] = True  # any Gaussian grown from the vertex
    if covered is not None:
        replaced |= covered.to(device)
    # 2. the edit onto the person's head: face Gaussians both heads agree on
    face = torch.tensor(FACE_CLASSES + (C["neck"],), device=device)
    pairs = ~replaced & torch.isin(person_labels[:T], face) & torch.isin(edit_labels, face)  # [T]
    if int(pairs.sum()) < 3:
        pairs = ~replaced
    if int(pairs.sum()) < 3:
        raise ValueError("fewer than 3 Gaussians are kept: nothing to align the edit with")
    src, dst = edit.means[pairs].float(), person.means[:T][pairs].float()  # [M, 3]
    s, R, t = similarity_transform(src, dst)
    err = ((s * src @ R.T + t) - dst).norm(dim=1)  # [M]
    keep = err <= 2 * err.median()  # one robust pass: drop the worst-matching pairs
    if int(keep.sum()) >= 3:
        s, R, t = similarity_transform(src[keep], dst[keep])
        err = ((s * src @ R.T + t) - dst).norm(dim=1)
    moved = edit.transformed(R.to(edit.means), scale=s, translation=t.to(edit.means))  # [T, …]
    # 3. seam band on the template
    rep_idx = replaced.nonzero().squeeze(1)  # [r]
    kept_idx = (~replaced).nonzero().squeeze(1)  # [k]
    new = moved[rep_idx]
    if band > 0 and len(rep_idx) and len(kept_idx):
        verts = template_vertices.to(device, torch.float32)
        dist = torch.empty(len(rep_idx), device=device)
        for start in range(0, len(rep_idx), 2048):
            dist[start : start + 2048] = torch.cdist(verts[rep_idx[start : start + 2048]], verts[kept_idx]).amin(dim=1)
        own = person[rep_idx]
        w = (1 - dist / band).clamp(0, 1) * ((new.means - own.means).norm(dim=1) <= max_pull)  # [r] 1 at the seam
        new = Gaussians(means=new.means + w[:, None] * (own.means - new.means),
                        quats=new.quats, scales=new.scales + w[:, None] * (own.scales - new.scales),
                        opacities=torch.maximum(new.opacities, w * own.opacities), colors=new.colors)
    kept = ~replaced[parent]  # [N]
    gaussians = Gaussians.cat([person[kept], new])
    labels = torch.cat([person_labels[kept], edit_labels[rep_idx]])
    from_edit = torch.cat([torch.zeros(int(kept.sum()), dtype=torch.bool, device=device),
                           torch.ones(len(rep_idx), dtype=torch.bool, device=device)])
    return Assembly(gaussians=gaussians, labels=labels, from_edit=from_edit, replaced=replaced,
                    transform=(s, R, t), residual=float(err.median()))


def longer_hair(labels: Tensor, length: float = 0.2) -> Tensor:
    """A map repainted with longer hair: below the hair's mid-height and down to ``length`` of the map's side
    past its lowest hair pixel, background and clothes pixels within the hair's width become hair (a curtain
    on both sides of the face and over the shoulders; the face and neck stay).

    Args:
        labels: a class map ``[H, W]`` long with some hair.
        length: how much further down the hair reaches, as a fraction of the map's height.

    Returns:
        the repainted map ``[H, W]`` long.

    Raises:
        ValueError: a map without hair, or a length outside [0, 1].
    """
    if not 0 <= length <= 1:
        raise ValueError(f"length must lie in [0, 1], got {length}")
    hair = labels == C["hair"]  # [H, W]
    if not hair.any():
        raise ValueError("the map has no hair to lengthen: paint some hair first")
    H, W = labels.shape
    rows, cols = hair.any(dim=1).nonzero().squeeze(1), hair.any(dim=0).nonzero().squeeze(1)
    top, bottom, left, right = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    y = torch.arange(H, device=labels.device)[:, None]  # [H, 1]
    x = torch.arange(W, device=labels.device)[None, :]  # [1, W]
    region = (y >= (top + bottom) // 2) & (y <= min(H - 1, bottom + round(length * H))) & (x >= left) & (x <= right)
    paint = region & ((labels == BACKGROUND) | (labels == C["cloth"]))  # [H, W]
    return torch.where(paint, torch.full_like(labels, C["hair"]), labels)
