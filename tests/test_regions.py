"""Tests for perchead.geometry.regions: split parents, per-Gaussian labels from views, alignment, assembly."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from perchead.geometry.cameras import orbit_cameras, project_points
from perchead.geometry.gaussians import Gaussians, random_gaussians
from perchead.geometry.regions import (
    C, REGION_SETS, assemble, decide_labels, family_labels, longer_hair, smooth_votes, template_neighbours, region_classes, similarity_transform, split_parents,
    vote_labels,
)
from perchead.fit.gaussians import split_gaussians

HAIR, SKIN, NECK, CLOTH = C["hair"], C["skin"], C["neck"], C["cloth"]


def rotation_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def test_split_parents_recovers_the_fits_split():
    g = random_gaussians(200, seed=1)
    chosen = torch.tensor([5, 17, 3, 150, 99])
    split, parent = split_gaussians(g, chosen)
    assert torch.equal(split_parents(split, 200), parent)
    assert torch.equal(split_parents(g, 200), torch.arange(200))
    with pytest.raises(ValueError, match="template Gaussians"):
        split_parents(split[:-1], 200)


def test_a_gaussian_behind_the_surface_gets_no_vote():
    cams = orbit_cameras([0.0], [0.0], radius=0.7, fov_deg=30.0, size=32)
    means = torch.tensor([[0.0, 0.0, 0.05], [0.0, 0.0, -0.05], [0.3, 0.3, 0.0]])  # front, behind, off-image
    pixels, depths = project_points(means, cams.viewmats, cams.Ks)  # [1, 3, 2], [1, 3]
    labels = torch.full((1, 32, 32), HAIR)
    surface = torch.full((1, 32, 32), float(depths[0, 0]))  # the front Gaussian is the surface
    votes = vote_labels(means, pixels, depths, labels, surface, tolerance=0.01)
    assert votes[0, HAIR] == 1 and votes[1].sum() == 0 and votes[2].sum() == 0
    # a weighted view counts its weight; a background pixel never votes
    votes = vote_labels(means, pixels, depths, labels, surface, weights=torch.tensor([2.5]))
    assert votes[0, HAIR] == 2.5
    assert vote_labels(means, pixels, depths, torch.zeros_like(labels), surface).sum() == 0


def test_unseen_gaussians_take_their_neighbours_class_and_the_prior_breaks_ties():
    means = torch.cat([torch.zeros(5, 3), torch.ones(5, 3)]) + 0.01 * torch.randn(10, 3)
    votes = torch.zeros(10, 19)
    votes[:4, HAIR] = 1  # seen near 0: hair
    votes[5:9, NECK] = 1  # seen near 1: neck
    labels = decide_labels(votes, means)
    assert labels[4] == HAIR and labels[9] == NECK
    # a tie between two views' votes goes to the template's part label
    votes = torch.zeros(1, 19)
    votes[0, HAIR] = votes[0, C["nose"]] = 1
    assert decide_labels(votes, torch.zeros(1, 3), prior=torch.tensor([C["nose"]]))[0] == C["nose"]
    assert decide_labels(votes, torch.zeros(1, 3), prior=torch.tensor([SKIN]))[0] in (HAIR, C["nose"])


def test_similarity_transform_recovers_a_known_one():
    src = torch.randn(50, 3)
    R, s, t = rotation_z(25.0), 1.3, torch.tensor([0.1, -0.2, 0.05])
    dst = s * src @ R.T + t
    s2, R2, t2 = similarity_transform(src, dst)
    assert s2 == pytest.approx(s, rel=1e-4)
    assert torch.allclose(R2, R, atol=1e-4) and torch.allclose(t2, t, atol=1e-4)
    with pytest.raises(ValueError):
        similarity_transform(src[:2], dst[:2])


def _heads(T: int = 120):
    """A person (with split children) and an edit that is the person turned, scaled, shifted and recoloured."""
    person0 = random_gaussians(T, seed=3)
    person, parent = split_gaussians(person0, torch.arange(0, T, 10))
    labels = torch.full((person.num_gaussians,), SKIN)
    hair_t = person0.means[:, 1] > 0  # [T] the upper half is hair
    labels[hair_t[parent]] = HAIR
    R, s, t = rotation_z(10.0), 0.9, torch.tensor([0.02, 0.0, -0.01])
    edit = person0.transformed(R.T, scale=1 / s, translation=-(t @ R) / s)  # so that s R edit + t = person0
    edit = replace(edit, colors=torch.tensor([1.0, 0.0, 0.0]).expand(T, 3).clone())  # red everywhere
    edit_labels = torch.where(hair_t, HAIR, SKIN)
    return person, labels, parent, edit, edit_labels, person0.means, hair_t


def test_assemble_keeps_the_person_and_takes_the_edits_regions():
    person, labels, parent, edit, edit_labels, verts, hair_t = _heads()
    out = assemble(person, labels, parent, edit, edit_labels, REGION_SETS["hair"], verts, band=0.0)
    kept = ~hair_t[parent]
    assert out.gaussians.num_gaussians == int(kept.sum()) + int(hair_t.sum())
    assert torch.equal(out.gaussians.means[: int(kept.sum())], person.means[kept])  # the face is the person's
    assert torch.equal(out.gaussians.colors[: int(kept.sum())], person.colors[kept])
    new = out.from_edit
    assert torch.equal(new, torch.arange(len(new)) >= int(kept.sum()))
    assert torch.allclose(out.gaussians.colors[new], torch.tensor([1.0, 0.0, 0.0]).expand(int(new.sum()), 3))
    # the edit was carried back onto the person's head: its hair lands on the person's hair
    assert torch.allclose(out.gaussians.means[new], verts[hair_t], atol=1e-4)
    assert out.transform[0] == pytest.approx(0.9, rel=1e-3) and out.residual < 1e-4
    assert torch.equal(out.labels, torch.cat([labels[kept], edit_labels[hair_t]]))


def test_assemble_regions_covered_and_seam():
    person, labels, parent, edit, edit_labels, verts, hair_t = _heads()
    # the edit grows hair on one skin Gaussian: it is replaced although the person has skin there
    edit_labels = edit_labels.clone()
    grown = int((~hair_t).nonzero()[0])
    edit_labels[grown] = HAIR
    out = assemble(person, labels, parent, edit, edit_labels, (HAIR,), verts, band=0.0)
    assert out.replaced[grown] and int(out.replaced.sum()) == int(hair_t.sum()) + 1
    covered = torch.zeros(len(verts), dtype=torch.bool)
    covered[(~hair_t).nonzero()[1]] = True
    out2 = assemble(person, labels, parent, edit, edit_labels, (HAIR,), verts, band=0.0, covered=covered)
    assert int(out2.replaced.sum()) == int(out.replaced.sum()) + 1
    # a seam band: replaced Gaussians next to kept ones take at least the person's opacity
    far = replace(edit, opacities=torch.full_like(edit.opacities, 0.01))
    out3 = assemble(person, labels, parent, far, edit_labels, (HAIR,), verts, band=1.0, max_pull=1.0)
    assert (out3.gaussians.opacities[out3.from_edit] > 0.01).any()
    with pytest.raises(ValueError, match="template"):
        assemble(person, labels, parent, edit[:-1], edit_labels[:-1], (HAIR,), verts)


def test_region_classes_and_longer_hair():
    assert HAIR in region_classes("hair") and CLOTH in region_classes("hair_and_clothes")
    assert SKIN not in region_classes("all_but_face") and NECK in region_classes("all_but_face")
    assert region_classes([13]) == (13,)
    for bad in ("beard", [0], [19], []):
        with pytest.raises(ValueError):
            region_classes(bad)
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[10:30, 16:48] = HAIR
    labels[20:40, 24:40] = SKIN
    labels[40:50, 28:36] = NECK
    labels[50:, 8:56] = CLOTH
    longer = longer_hair(labels, 0.25)
    assert (longer == HAIR).sum() > (labels == HAIR).sum()
    assert (longer[30:46, 16:24] == HAIR).all()  # the hair now falls beside the face and neck, 16 rows further
    assert torch.equal(longer[46:], labels[46:])
    assert torch.equal(longer == SKIN, labels == SKIN) and torch.equal(longer == NECK, labels == NECK)
    assert (longer[:, :16] == labels[:, :16]).all()  # nothing outside the hair's width
    with pytest.raises(ValueError, match="no hair"):
        longer_hair(torch.ones(8, 8, dtype=torch.long))


def test_a_family_takes_its_majority_and_votes_pool_over_neighbours():
    parent = torch.tensor([0, 1, 2, 0, 0, 0])  # Gaussian 0 was split: children 3, 4, 5
    labels = torch.tensor([SKIN, HAIR, NECK, HAIR, HAIR, HAIR])
    assert family_labels(labels, parent, 3).tolist() == [HAIR, HAIR, NECK, HAIR, HAIR, HAIR]
    tie = torch.tensor([SKIN, HAIR, NECK, HAIR, HAIR, SKIN])  # two against two: the template Gaussian's own
    assert family_labels(tie, parent, 3).tolist() == [SKIN, HAIR, NECK, SKIN, SKIN, SKIN]
    # a lone stray vote is outweighed by its neighbourhood
    verts = torch.tensor([[0.0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [1.0, 0, 0]])
    near = template_neighbours(verts, 3)
    assert near[0, 0] == 0 and set(near[1].tolist()) == {0, 1, 2}
    votes = torch.zeros(4, 19)
    votes[[0, 2], SKIN] = 1
    votes[1, HAIR] = 1
    pooled = smooth_votes(votes, torch.arange(4), near, weight=6.0)  # Gaussian 1: hair 1 + 2, skin 0 + 4
    assert pooled[1].argmax() == SKIN and pooled[1, HAIR] == 3 and pooled[1, SKIN] == 4
    assert torch.equal(smooth_votes(votes, torch.arange(4), near, weight=0.0), votes)
