"""Tests for perchead/models/base.py: the checkpoint mixin and the 3D half shared by PercHead and the editor."""

import dataclasses
import json

import pytest
import torch

from perchead.models.base import CONFIG_NAME, WEIGHTS_NAME, checkpoint_model_type, resolve_checkpoint
from perchead.models.hub import hub_offline
from perchead.models.config import PercHeadConfig
from perchead.models.edit_encoder import EditConfig
from perchead.models.editor import PercHeadEditor
from perchead.models.perchead import DINO_PREFIX, PercHead


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PercHead(PercHeadConfig.preset("tiny")).eval()


def test_weights_loaded_by_id_are_not_stored_and_may_be_absent(tiny, tmp_path):
    assert any(k.startswith(DINO_PREFIX) for k in tiny.checkpoint_state_dict())  # random DINOv2: stored
    config = dataclasses.replace(tiny.config, encoder=dataclasses.replace(
        tiny.config.encoder, dino=dataclasses.replace(tiny.config.encoder.dino, pretrained=True, model_id="local/dinov2")))
    by_id = PercHead(config, dino=tiny.encoder.dino.model)  # as if DINOv2 had been loaded by its id
    by_id.load_state_dict(tiny.state_dict())
    state = by_id.checkpoint_state_dict()
    assert state and not any(k.startswith(DINO_PREFIX) for k in state)
    by_id.save_pretrained(tmp_path)
    by_id.load_checkpoint(tmp_path / WEIGHTS_NAME)  # the missing DINOv2 tensors are not an error
    assert checkpoint_model_type(tmp_path) == "perchead"


def test_one_format_for_both_models_and_clear_type_errors(tiny, tmp_path):
    editor = PercHeadEditor.from_base(tiny, EditConfig.for_base(tiny.config, style_dim=8))
    editor.save_pretrained(tmp_path / "editor")
    assert json.loads((tmp_path / "editor" / CONFIG_NAME).read_text())["model_type"] == "perchead-editor"
    loaded = PercHeadEditor.from_pretrained(tmp_path / "editor")
    for name in ("decoder", "head", "refiner"):  # the shared 3D half, same keys as the base model's
        torch.testing.assert_close(getattr(loaded, name).state_dict(), getattr(tiny, name).state_dict())
    with pytest.raises(ValueError, match="perchead-editor"):
        PercHead.from_pretrained(tmp_path / "editor")
    tiny.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="from_base"):
        PercHeadEditor.from_pretrained(tmp_path / "base")
    (tmp_path / "base" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        resolve_checkpoint(tmp_path / "base")


def test_render_at_per_item_cameras_equals_shared_cameras(tiny):
    with torch.no_grad():
        g = tiny(torch.rand(2, 3, 64, 64), torch.ones(2, 1, 64, 64))
        cams = tiny.default_cameras([0.0, 90.0], size=32)
        shared = tiny.render_views(g, cams)
        per_item = tiny.render_at(g, cams.viewmats[None].expand(2, -1, -1, -1), cams.Ks[None].expand(2, -1, -1, -1),
                                  32, 32)
    torch.testing.assert_close(per_item.rgb, shared.rgb)
    assert shared.rgb.shape == (2, 2, 3, 32, 32)


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("ON", True), ("0", False), ("", False)])
def test_hub_offline_reads_the_environment_once_one_way(monkeypatch, value, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
