"""Restyle my head: the person's own reconstructed head with some regions (default: the hair) replaced by an edit.

The map-based editor (:class:`~perchead.pipelines.edit.PercHeadEditPipeline`) builds a whole new head from a
segmentation map and a style: the model's generic face with the asked-for hair. What a visitor usually means
by "give me red hair" is *their* head with red hair. :class:`Restyler` puts that together:

1. **Regions of the person's head** (:meth:`Restyler.regions`): every Gaussian of the reconstruction gets a
   class (hair, skin, eyes, brows, nose, lips, ears, neck, clothes …) from the photo's map at the input view,
   the face parser's maps of renders from six more views, pooled over template neighbours, and the template's
   own labels as a weak prior (:func:`perchead.geometry.regions.decide_labels`). Computed once per
   reconstruction.
2. **The edit** runs the editor on the photo's map (or a repainted one: longer hair, no glasses) with the
   prompt or reference image, and labels the edited head the same way, its own map at the input view.
3. **Assembly** (:func:`perchead.geometry.regions.assemble`): the edited Gaussians of the chosen regions,
   carried onto the person's head, with the person's photo-fitted Gaussians for the rest and a blended seam.

Example::

    edit = PercHeadEditPipeline.from_pretrained("weights_card")
    restyler = Restyler(edit)
    rec = reconstruct(photo, fit_steps=40, fit=FitConfig.preset("real"))
    labels, prep = edit.segment(photo, return_preprocessed=True)
    camera = prep.input_camera(pitch_offset_deg=REAL_FACE_PITCH_DEG)     # the camera the fit used
    person = restyler.regions(rec.gaussians[0], labels, camera)         # once per reconstruction
    out = restyler(person, labels, style_text="red hair")                # the person, red-haired
    out.gaussians, out.timings
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from perchead.geometry.cameras import Cameras, orbit_cameras, project_points
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.regions import (
    assemble, decide_labels, family_labels, region_classes, smooth_votes, split_parents, template_neighbours, vote_labels,
)  # fmt: skip
from perchead.geometry.segmentation import PALETTE, resize_labels
from perchead.geometry.template import template_labels
from perchead.pipelines.common import StageTimer
from perchead.pipelines.edit import Edit, PercHeadEditPipeline
from perchead.progress import Progress, no_progress


@dataclass
class RestyleConfig:
    """How heads are labelled and assembled.

    Attributes:
        views: (azimuth, elevation) of the views parsed besides the input view, degrees (ours: the sides, the
            back and the crown, where a frontal photo shows nothing).
        label_size: side of the label renders.
        input_weight: weight of the input view's map against each parsed view (it is the photo's own map).
        tolerance: how far behind a view's rendered surface a Gaussian still counts as seen, metres.
        smooth: weight of the template neighbourhood's votes (:func:`perchead.geometry.regions.smooth_votes`).
        neighbours: template neighbours whose votes are pooled.
        band: seam band on the template, metres (:func:`perchead.geometry.regions.assemble`).
        max_pull: the farthest an edited Gaussian is pulled onto the person's at the seam, metres.
    """

    views: tuple[tuple[float, float], ...] = ((45.0, 0.0), (-45.0, 0.0), (90.0, 0.0), (-90.0, 0.0), (180.0, 0.0),
                                              (0.0, 60.0))
    label_size: int = 128
    input_weight: float = 2.0
    tolerance: float = 0.012
    smooth: float = 0.3
    neighbours: int = 8
    band: float = 0.015
    max_pull: float = 0.02

    def __post_init__(self) -> None:
        if self.label_size < 16:
            raise ValueError(f"RestyleConfig.label_size must be >= 16, got {self.label_size}")
        if self.neighbours < 1:
            raise ValueError(f"RestyleConfig.neighbours must be >= 1, got {self.neighbours}")
        for name in ("input_weight", "tolerance", "smooth", "band", "max_pull"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RestyleConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class HeadRegions:
    """A labelled head: what :meth:`Restyler.regions` returns (kept beside a reconstruction).

    Attributes:
        gaussians: the head. ``[N, …]``
        labels: a class per Gaussian. ``[N]`` long
        parent: each Gaussian's template parent. ``[N]`` long
        camera: the input view (one camera) its map was seen from.
        input_map: the photo's class map at that view. ``[S, S]`` long
    """

    gaussians: Gaussians
    labels: Tensor
    parent: Tensor
    camera: Cameras
    input_map: Tensor


@dataclass
class Restyled:
    """What :class:`Restyler` returns.

    Attributes:
        gaussians: the person's head with the chosen regions replaced. ``[1, M, …]`` (batched, like an Edit)
        labels: the class of each of its Gaussians. ``[M]`` long
        from_edit: which of its Gaussians came from the edit. ``[M]`` bool
        edit: the editor's whole head (:class:`~perchead.pipelines.edit.Edit`).
        edit_labels: the class of each of the edit's Gaussians. ``[T]`` long
        regions: the replaced class ids.
        timings: seconds per stage: ``edit``, ``label``, ``assemble``, ``total``.
        notes: remarks for the user.
    """

    gaussians: Gaussians
    labels: Tensor
    from_edit: Tensor
    edit: Edit
    edit_labels: Tensor
    regions: tuple[int, ...]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def label_colors(labels: Tensor) -> Tensor:
    """The palette colour of each Gaussian's class, for a debug render. ``[N]`` → ``[N, 3]`` in [0, 1]"""
    return torch.tensor(PALETTE, dtype=torch.float32, device=labels.device)[labels] / 255.0


def at_size(camera: Cameras, size: int) -> Cameras:
    """The same view rendered at ``size``² pixels (square cameras: the intrinsics scale with the side)."""
    Ks = camera.Ks.clone().float()
    Ks[:, :2] *= size / camera.width
    return Cameras(camera.viewmats.float(), Ks, size, size)


class Restyler:
    """The person's reconstructed head + an edit of its map → the person's head with regions replaced.

    Args:
        edit: the editing pipeline (its editor renders, its parser labels the views).
        config: :class:`RestyleConfig`.
    """

    def __init__(self, edit: PercHeadEditPipeline, config: RestyleConfig | None = None):
        self.edit = edit
        self.config = config or RestyleConfig()
        self.template_labels = template_labels(edit.editor.template)  # [T]
        self.neighbours = template_neighbours(edit.editor.template.vertices, self.config.neighbours)  # [T, k]

    @property
    def n_template(self) -> int:
        return self.template_labels.shape[0]

    def front_camera(self) -> Cameras:
        """The editor's frontal view, for heads without a photo pose (synthetic inputs, a searched pose)."""
        return self.edit.editor.default_cameras([0.0], [0.0], size=self.config.label_size)

    @torch.no_grad()
    def label(self, gaussians: Gaussians, input_map: Tensor, camera: Cameras | None = None,
              parent: Tensor | None = None) -> Tensor:
        """A class per Gaussian of one head: the input view's map, parsed renders of the other views, the
        template's labels as a prior, nearest neighbours for Gaussians no view sees.

        Args:
            gaussians: one head ``[N, …]`` (or ``[1, N, …]``).
            input_map: its class map at ``camera``. ``[H, W]`` long
            camera: the input view (one camera; default :meth:`front_camera`).
            parent: each Gaussian's template parent ``[N]`` (default: :func:`split_parents`).

        Returns:
            ``[N]`` long in 1..18.
        """
        g = gaussians[0] if gaussians.is_batched else gaussians
        g = g.to(self.edit.device).float()
        cfg = self.config
        size = cfg.label_size
        camera = self.front_camera() if camera is None else camera
        if len(camera) != 1:
            raise ValueError(f"the input view must be one camera, got {len(camera)}")
        first = at_size(camera, size)  # the input view at the label size
        r = self.edit.editor.config.render
        others = orbit_cameras([a for a, _ in cfg.views], [e for _, e in cfg.views], radius=r.radius,
                               fov_deg=r.fov_deg, size=size)
        cams = Cameras(torch.cat([first.viewmats, others.viewmats]), torch.cat([first.Ks, others.Ks]), size, size)
        cams = cams.to(self.edit.device)
        out = self.edit.editor.render_views(g, cams, return_depth=True)
        rgb, alpha = out.rgb[0].float().clamp(0, 1), out.alpha[0].float()  # [V, 3, s, s], [V, 1, s, s]
        surface = torch.where(alpha[:, 0] > 0.5, out.depth[0, :, 0].float() / alpha[:, 0].clamp_min(1e-6),
                              torch.zeros_like(alpha[:, 0]))  # [V, s, s]
        parsed = self.edit.parser.parse(rgb[1:], mask=alpha[1:]).long()  # [V-1, s, s]
        seen = resize_labels(input_map.long().cpu(), size) if input_map.shape[-1] != size else input_map.long().cpu()
        seen = torch.where(alpha[0, 0].cpu() > 0.5, seen, torch.zeros_like(seen))  # [s, s]
        maps = torch.cat([seen[None].to(parsed.device), parsed]).to(g.means.device)  # [V, s, s]
        pixels, depths = project_points(g.means, cams.viewmats, cams.Ks)  # [V, N, 2], [V, N]
        weights = torch.ones(len(cams), device=g.means.device)
        weights[0] = cfg.input_weight
        votes = vote_labels(g.means, pixels, depths, maps, surface.to(g.means.device), weights, cfg.tolerance)
        if parent is None:
            parent = split_parents(g, self.n_template)
        parent = parent.to(g.means.device)
        votes = smooth_votes(votes, parent, self.neighbours.to(g.means.device), cfg.smooth)
        labels = decide_labels(votes, g.means, self.template_labels.to(g.means.device), parent)
        return family_labels(labels, parent, self.n_template)

    def regions(self, gaussians: Gaussians, input_map: Tensor, camera: Cameras | None = None,
                parent: Tensor | None = None) -> HeadRegions:
        """Labels the person's reconstructed head once (see :meth:`label`); the result feeds every edit."""
        g = (gaussians[0] if gaussians.is_batched else gaussians).to(self.edit.device).float()
        parent = split_parents(g, self.n_template) if parent is None else parent.to(self.edit.device)
        camera = self.front_camera() if camera is None else camera
        labels = self.label(g, input_map, camera, parent)
        return HeadRegions(gaussians=g, labels=labels, parent=parent, camera=camera,
                           input_map=input_map.long().cpu())

    @torch.no_grad()
    def covered(self, person: HeadRegions, edit_map: Tensor, classes: tuple[int, ...]) -> Tensor:
        """The person's template Gaussians seen at the input view where a repainted map newly has one of
        ``classes`` (longer hair over the shoulders; none for the photo's own map): they give way to the edit.
        ``[T]`` bool"""
        g, size = person.gaussians, edit_map.shape[-1]
        wanted = torch.isin(edit_map.long().cpu(), torch.tensor(classes))  # [s, s]
        before = person.input_map if person.input_map.shape[-1] == size else resize_labels(person.input_map, size)
        wanted &= ~torch.isin(before, torch.tensor(classes))  # only what the repainting added
        covered = torch.zeros(self.n_template, dtype=torch.bool, device=g.means.device)
        if not wanted.any():
            return covered
        cam = at_size(person.camera, size).to(g.means.device)
        out = self.edit.editor.render_views(g, cam, refine=False, return_depth=True)
        alpha = out.alpha[0, 0, 0].float()  # [s, s]
        surface = torch.where(alpha > 0.5, out.depth[0, 0, 0].float() / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
        pixels, depths = project_points(g.means, cam.viewmats, cam.Ks)  # [1, N, 2], [1, N]
        votes = vote_labels(g.means, pixels, depths, wanted.long()[None].to(g.means.device), surface[None],
                            tolerance=self.config.tolerance)
        seen = votes[:, 1] > 0  # [N] the person's Gaussians in front where the map now has the regions
        covered[person.parent[seen]] = True
        return covered

    @torch.no_grad()
    def __call__(self, person: HeadRegions, edit_map: Any = None, style_text: str | None = None,
                 style_image: Any = None, *, regions: str | tuple[int, ...] = "hair", snap: bool = False,
                 progress: Progress = no_progress) -> Restyled:
        """The person's head with ``regions`` replaced by the edit of ``edit_map`` in the given style.

        Args:
            person: the labelled reconstruction (:meth:`regions`).
            edit_map: the map to edit from (class ids or a palette-coloured map, as the editor takes); None =
                the photo's own map (``person.input_map``).
            style_text, style_image: the style, exactly one (as :class:`PercHeadEditPipeline`).
            regions: a name of :data:`perchead.geometry.regions.REGION_SETS` (``"hair"``,
                ``"hair_and_clothes"``, ``"all_but_face"``) or class ids.
            snap: for a coloured map, snap foreign colours to the palette.
            progress: called with (fraction, stage); may raise to stop.

        Returns:
            :class:`Restyled`.

        Raises:
            ValueError: unknown regions, a bad map or style (the editor's messages).
        """
        classes = region_classes(regions)
        timer = StageTimer(self.edit.device)
        progress(0.0, "editing the map")
        edit = self.edit(person.input_map if edit_map is None else edit_map, style_text=style_text,
                         style_image=style_image, snap=snap)
        timer("edit")
        progress(0.4, "finding the edited head's regions")
        edit_g = edit.gaussians[0].to(self.edit.device)
        edit_labels = self.label(edit_g, edit.labels[0], person.camera, torch.arange(edit_g.num_gaussians,
                                                                                  device=self.edit.device))
        covered = self.covered(person, edit.labels[0], classes)  # [T]
        timer("label")
        progress(0.7, "putting the head together")
        out = assemble(person.gaussians, person.labels, person.parent, edit_g, edit_labels, classes,
                       self.edit.editor.template.vertices, band=self.config.band, max_pull=self.config.max_pull,
                       covered=covered)
        timer("assemble")
        notes = list(edit.notes)
        if not bool(out.replaced.any()):
            notes.append("neither the photo's head nor the edit has any of the chosen regions: nothing was replaced")
        return Restyled(gaussians=out.gaussians.batched(), labels=out.labels, from_edit=out.from_edit, edit=edit,
                        edit_labels=edit_labels, regions=classes, timings=timer.total(), notes=notes)
