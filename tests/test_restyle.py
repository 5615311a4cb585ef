"""Tests for perchead.pipelines.restyle: a labelled head and the person's head with an edit's regions, on tiny
random models (the editing folder of tests/test_edit.py)."""

from __future__ import annotations

import pytest
import torch

from perchead.geometry.regions import REGION_SETS
from perchead.geometry.segmentation import PALETTE
from perchead.pipelines.edit import PercHeadEditPipeline
from perchead.fit.gaussians import split_gaussians
from perchead.pipelines.restyle import RestyleConfig, Restyled, Restyler, label_colors
from test_edit import head_map, make_edit_folder  # tests/ is on sys.path under pytest


@pytest.fixture(scope="module")
def restyler(tmp_path_factory):
    folder = tmp_path_factory.mktemp("editing")
    make_edit_folder(folder)
    pipe = PercHeadEditPipeline.from_pretrained(folder, device="cpu")
    return Restyler(pipe, RestyleConfig(label_size=32))


@pytest.fixture(scope="module")
def person(restyler):
    """A 'reconstruction': an edit of the hand-drawn map, with a fit-like split of a tenth of its Gaussians."""
    size = restyler.edit.image_size
    g = restyler.edit(head_map(size), style_text="brown hair").gaussians[0]
    T = g.num_gaussians
    split, parent = split_gaussians(g, torch.arange(0, T, 10))
    return restyler.regions(split, head_map(size)), parent


def test_regions_label_every_gaussian_and_know_the_parents(restyler, person):
    regions, parent = person
    N = regions.gaussians.num_gaussians
    assert regions.labels.shape == (N,) and int(regions.labels.min()) >= 1 and int(regions.labels.max()) <= 18
    assert torch.equal(regions.parent, parent)
    assert len(regions.camera) == 1
    # the debug render's colours are the palette's
    colors = label_colors(regions.labels)
    assert torch.allclose(colors[0] * 255, torch.tensor(PALETTE[int(regions.labels[0])], dtype=torch.float32))


def test_restyle_keeps_the_persons_gaussians_outside_the_regions(restyler, person):
    regions, parent = person
    out = restyler(regions, style_text="red hair", regions="hair")
    assert isinstance(out, Restyled) and out.gaussians.is_batched
    M = out.gaussians.num_gaussians
    assert out.labels.shape == (M,) and out.from_edit.shape == (M,)
    kept = out.gaussians[0][~out.from_edit]
    # every kept Gaussian is one of the person's, unchanged
    person_rows = {tuple(row) for row in torch.cat([regions.gaussians.means, regions.gaussians.colors], 1).tolist()}
    assert all(tuple(row) in person_rows for row in torch.cat([kept.means, kept.colors], 1).tolist())
    assert 0 < len(kept) < regions.gaussians.num_gaussians
    # the replaced ones carry the regions' labels in one of the heads, and none of the person's kept ones does
    assert not torch.isin(out.labels[~out.from_edit], torch.tensor(REGION_SETS["hair"])).any()
    assert set(out.timings) >= {"edit", "label", "assemble", "total"}
    assert out.edit_labels.shape == (out.edit.gaussians.num_gaussians,)
    # replacing more regions replaces at least as many Gaussians
    wide = restyler(regions, style_text="red hair", regions="all_but_face")
    assert int(wide.from_edit.sum()) >= int(out.from_edit.sum())


def test_restyle_refuses_bad_regions_and_styles(restyler, person):
    regions, _ = person
    with pytest.raises(ValueError, match="unknown regions"):
        restyler(regions, style_text="red hair", regions="beard")
    with pytest.raises(ValueError, match="no style"):
        restyler(regions)
    with pytest.raises(ValueError):
        RestyleConfig(label_size=4)
