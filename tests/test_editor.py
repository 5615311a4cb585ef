"""Tests for perchead/models/editor.py and edit_encoder.py: the editing model (paper §3.5) and the ``edit`` training task."""

import json

import pytest
import torch

from perchead.models.config import PercHeadConfig
from perchead.models.edit_encoder import STYLE_INDEX, EditConfig, EditEncoder
from perchead.models.editor import PercHeadEditor, load_editor_config
from perchead.models.lift_encoder import Tokens2D
from perchead.models.perchead import PercHead

E = 16  # style embedding size of the tests' stand-in embeddings
S = 64  # tiny preset image size (8 × 8 patches of 8 pixels)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(1)
    return PercHead(PercHeadConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def trained_base():
    """A tiny base whose weights are perturbed away from the initialisation (non-zero offsets, varied colours)."""
    torch.manual_seed(2)
    model = PercHead(PercHeadConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def label_maps() -> torch.Tensor:
    """Two label maps: a skin block under hair, and a thin neck strip with unknown (-1) pixels."""
    labels = torch.zeros(2, S, S, dtype=torch.long)  # [2, S, S]
    labels[0, 10:40, 20:50] = 1  # skin: patch rows 1..4 × cols 2..6 = 20 patches
    labels[0, 4:12, 20:50] = 13  # hair on top: adds patch row 0 (cols 2..6) = 5 patches → 25
    labels[1, 30:60, 8:16] = 17  # neck: patch rows 3..7 × col 1 = 5 patches
    labels[1, 0:8, 0:8] = -1  # unknown pixels count as background
    return labels


def test_edit_config_for_base_and_validation(base):
    cfg = EditConfig.for_base(base.config, E)
    assert cfg.patch_size == base.config.encoder.patch_size and cfg.width == base.config.encoder.width
    assert cfg.style_dim == E and cfg.num_classes == 19
    assert EditConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible by heads"):
        EditConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown keys"):
        EditConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="must match the lift encoder"):
        PercHeadEditor(base.config, EditConfig.for_base(base.config, E, patch_size=16))


def test_tokens_are_non_background_patches_plus_one_style_token():
    cfg = EditConfig(patch_size=8, width=32, depth=1, heads=2, style_dim=E)
    encoder = EditEncoder(cfg, out_dim=24)
    labels = label_maps()
    tok = encoder(labels, torch.randn(2, E))
    assert isinstance(tok, Tokens2D) and tok.grid == (8, 8)
    assert tok.tokens.shape == (2, 25 + 1, 24)
    assert tok.counts.tolist() == [25 + 1, 5 + 1]
    # the style token is last and never padded; padding sits between the patches and the style token
    assert not tok.padding_mask[:, -1].any() and (tok.patch_index[:, -1] == STYLE_INDEX).all()
    assert tok.padding_mask[1, 5:-1].all() and (tok.patch_index[1, 5:-1] == -1).all()
    assert tok.patch_index[1, :5].tolist() == [25, 33, 41, 49, 57]  # raster order, column 1 of rows 3..7
    # the style token is MLP(style): the same for the same embedding, shared [1, E] broadcasts
    shared = encoder(labels, torch.ones(1, E))
    torch.testing.assert_close(shared.tokens[0, -1], shared.tokens[1, -1])
    # no style → the learned "no style" token
    none = encoder(labels, None)
    torch.testing.assert_close(none.tokens[:, -1], encoder.null_style.expand(2, -1))
    torch.testing.assert_close(none.tokens[:, :-1], tok.tokens[:, :-1])  # geometry tokens do not see the style


def test_encoder_errors():
    encoder = EditEncoder(EditConfig(patch_size=8, width=32, depth=1, heads=2, style_dim=E), out_dim=32)
    labels = label_maps()
    with pytest.raises(ValueError, match="only background"):
        encoder(torch.zeros(1, S, S, dtype=torch.long), None)
    with pytest.raises(ValueError, match="style must be"):
        encoder(labels, torch.randn(2, E + 1))
    with pytest.raises(ValueError, match="integer"):
        encoder(labels.float(), None)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encoder(labels[:, :60, :60], None)
    with pytest.raises(ValueError, match="-1..18"):
        encoder(labels.clamp(max=0) + 19, None)


def test_gradients_reach_edit_encoder_and_style_mlp(base):
    editor = PercHeadEditor.from_base(base, style_dim=E).train()
    g = editor(label_maps(), torch.randn(2, E))
    (g.colors.square().sum() + g.scales.sum() + g.opacities.sum()).backward()
    enc = editor.edit_encoder
    for name, p in [("patch_embed", enc.vit.patch_embed.weight), ("vit block", enc.vit.blocks[0].attn.q.weight),
                    ("fuse", enc.fuse.fc1.weight), ("style fc1", enc.style_mlp.fc1.weight),
                    ("style fc2", enc.style_mlp.fc2.weight), ("decoder", editor.decoder.layers[0].mlp.fc1.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert enc.null_style.grad is None  # unused when a style is given


def test_from_base_copies_decoder_head_refiner(trained_base):
    editor = PercHeadEditor.from_base(trained_base, style_dim=E).eval()
    assert editor.config == trained_base.config and editor.config is not trained_base.config
    assert torch.equal(editor.template.vertices, trained_base.template.vertices)
    for part in ("decoder", "head", "refiner"):
        a, b = getattr(editor, part).state_dict(), getattr(trained_base, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(getattr(editor, part).parameters(),
                                                               getattr(trained_base, part).parameters()))
    torch.manual_seed(3)
    tokens = Tokens2D(torch.randn(2, 7, 32), torch.tensor([[False] * 7, [False] * 4 + [True] * 3]),
                      torch.arange(7).expand(2, 7), (8, 8))
    with torch.no_grad():
        g_base = trained_base.to_gaussians(trained_base.decode(tokens))
        g_edit = editor.to_gaussians(editor.decode(tokens))
    for field in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(g_base, field), getattr(g_edit, field)), field
    assert (g_base.means - trained_base.template.vertices).abs().max() > 1e-3  # the check is not vacuous
    # the same rendering path (refiner included) as the base model
    cams = editor.default_cameras([0.0, 120.0], size=32)
    torch.testing.assert_close(editor.render_views(g_edit, cams).rgb, trained_base.render_views(g_base, cams).rgb)


def test_untrained_editor_outputs_template_and_style_changes_appearance(base):
    editor = PercHeadEditor.from_base(base, style_dim=E).eval()
    labels = label_maps()
    with torch.no_grad():
        g1 = editor(labels, torch.randn(2, E))
        g2 = editor(labels, torch.randn(2, E))
        g0 = editor(labels, None)
    template = editor.template.vertices.expand(2, -1, -1)
    # zero-initialised offset layer: every map and style gives exactly the template's vertices
    for g in (g1, g2, g0):
        assert torch.equal(g.means, template)
    # the style token reaches the appearance: other styles give other colours (and other scales/opacities)
    assert (g1.colors - g2.colors).abs().max() > 1e-7
    assert (g1.colors - g0.colors).abs().max() > 1e-7
    g1.validate()


def test_save_load_round_trip(tmp_path, trained_base):
    editor = PercHeadEditor.from_base(trained_base, style_dim=E).eval()
    with torch.no_grad():
        for p in editor.edit_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = editor.save_pretrained(tmp_path / "editor")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["model_type"] == "perchead-editor" and meta["edit"]["style_dim"] == E
    assert meta["decoder"] == trained_base.config.to_dict()["decoder"]
    loaded = PercHeadEditor.from_pretrained(folder)
    assert not loaded.training and loaded.config == editor.config and loaded.edit_config == editor.edit_config
    a, b = editor.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    labels, style = label_maps(), torch.randn(2, E)
    with torch.no_grad():
        ga, gb = editor(labels, style), loaded(labels, style)
    assert torch.equal(ga.means, gb.means) and torch.equal(ga.colors, gb.colors)
    # the two checkpoint kinds are told apart
    with pytest.raises(ValueError, match="not 'perchead'"):
        PercHead.from_pretrained(folder)
    trained_base.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="from_base"):
        PercHeadEditor.from_pretrained(tmp_path / "base")
    assert load_editor_config(folder / "config.json")[1] == editor.edit_config


def test_encode_checks_map_size(base):
    editor = PercHeadEditor.from_base(base, style_dim=E)
    with pytest.raises(ValueError, match="resize_labels"):
        editor.encode(torch.ones(1, 32, 32, dtype=torch.long))


# ------------------------------------------------------------------------------------------ training task
@pytest.fixture(scope="module")
def style_folder(tmp_path_factory):
    """A tiny random open_clip style encoder saved as a folder (perchead.models.style_encoder)."""
    from perchead.models.style_encoder import StyleEncoder

    torch.manual_seed(4)
    folder = tmp_path_factory.mktemp("style")
    StyleEncoder.from_config("tiny").save_pretrained(folder)
    return folder


def test_edit_task_smoke_run_then_resume(tmp_path, base, style_folder, capsys):
    from perchead.models.style_encoder import StyleEncoder
    from perchead.training.train import main

    base.save_pretrained(tmp_path / "base")
    out = tmp_path / "edit"
    common = ["--task", "edit", "--preset", "tiny", "--data", "synthetic", "--init-from", str(tmp_path / "base"),
              "--style", str(style_folder), "--output", str(out), "--batch-size", "1", "--n-targets", "2",
              "--save-every", "1", "--no-progress"]
    main(common + ["--phase1-steps", "2", "--phase2-steps", "1"])
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3] and [r["phase"] for r in logs] == [1, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in logs)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    assert json.loads((out / "train_config.json").read_text())["style"] == str(style_folder)

    editor = PercHeadEditor.from_pretrained(out)
    assert editor.edit_config == EditConfig.for_base(base.config, StyleEncoder.from_pretrained(style_folder).embed_dim)
    # phase 1 trained the edit encoder and the decoder; phase 2 the refiner
    assert not torch.equal(editor.decoder.layers[0].mlp.fc1.weight, base.decoder.layers[0].mlp.fc1.weight)
    assert not torch.equal(editor.refiner.stem.weight, base.refiner.stem.weight)
    assert torch.equal(editor.head.template_vertices, base.head.template_vertices)

    # resume continues the editor checkpoint (built from the editor, not from the base again)
    main(common + ["--phase1-steps", "2", "--phase2-steps", "2", "--resume"])
    assert "resuming from" in capsys.readouterr().out
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]

    # fine-tuning can continue from an editor checkpoint; its style size must match the style encoder's
    from dataclasses import replace

    from perchead.models.style_encoder import style_config
    from perchead.training.config import TrainConfig
    from perchead.training.edit import edit_model_config

    cont = TrainConfig.preset_defaults("tiny", task="edit", init_from=str(out), style=str(style_folder))
    assert edit_model_config(cont) == editor.edit_config
    StyleEncoder.from_config(replace(style_config("tiny"), embed_dim=24)).save_pretrained(tmp_path / "style24")
    with pytest.raises(ValueError, match="24-d"):
        edit_model_config(replace(cont, style=str(tmp_path / "style24")))


# ------------------------------------------------------------------------------------------ style → colour
def test_style_color_path_starts_at_zero_then_shifts_colours_of_gated_patches(trained_base):
    editor = PercHeadEditor.from_base(trained_base, style_dim=E).eval()
    assert editor.style_color is None
    with_path = editor.with_style_color().eval()
    assert with_path.edit_config.style_color and not editor.edit_config.style_color
    labels, style = label_maps(), torch.randn(2, E)
    with torch.no_grad():
        before, after = editor(labels, style), with_path(labels, style)
    assert torch.equal(before.colors, after.colors) and torch.equal(before.means, after.means)  # added at zero
    with pytest.raises(ValueError, match="already has"):
        with_path.with_style_color()

    # a trained shift moves colours; patches whose gate is closed keep theirs; other styles shift differently
    with torch.no_grad():
        with_path.style_color.shift.weight.normal_(std=1.0)
        tokens2d = with_path.encode(labels, style)
        tokens3d = with_path.decode(tokens2d)
        gate = torch.sigmoid(with_path.style_color.gate(with_path.style_color.gate_norm(tokens3d)))  # [B, P, 1]
        bias = with_path.color_bias(tokens2d, tokens3d)  # [B, P, 3]
        g = with_path(labels, style)
        g_other = with_path(labels, torch.randn(2, E))
    P = tokens3d.shape[1]
    assert bias.shape == (2, P, 3) and (g.colors - before.colors).abs().max() > 1e-3
    assert (g.colors - g_other.colors).abs().max() > 1e-3
    assert torch.equal(g.means, before.means)  # colour only: the geometry is untouched
    logit = torch.logit(before.colors.double())  # [B, N, 3]
    expected = torch.sigmoid(logit + bias.double().repeat_interleave(16, dim=1))
    assert torch.allclose(g.colors.double(), expected, atol=1e-5)
    shift = bias / gate  # [B, P, 3]  one shift per head, scaled per patch by its gate
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    # with the gate shut everywhere no colour moves
    with torch.no_grad():
        with_path.style_color.gate.bias.fill_(-1e4)
        shut = with_path(labels, style)
    assert torch.allclose(shut.colors, before.colors, atol=1e-6)


def test_style_color_round_trip_and_edit_task_option(tmp_path, trained_base, style_folder):
    from dataclasses import replace

    from perchead.training.config import TrainConfig
    from perchead.training.edit import build_edit_model, edit_model_config

    editor = PercHeadEditor.from_base(trained_base, style_dim=E).with_style_color().eval()
    with torch.no_grad():
        editor.style_color.shift.weight.normal_()
    folder = editor.save_pretrained(tmp_path / "editor")
    loaded = PercHeadEditor.from_pretrained(folder)
    assert loaded.edit_config.style_color and torch.equal(loaded.style_color.shift.weight, editor.style_color.shift.weight)

    # the edit task adds the path to an editor trained without it, and only that difference is accepted
    plain = PercHeadEditor.from_base(trained_base, style_dim=32)
    plain.save_pretrained(tmp_path / "plain")
    cfg = TrainConfig.preset_defaults("tiny", task="edit", init_from=str(tmp_path / "plain"), style=str(style_folder),
                                      options={"style_color": True})
    edit_config = edit_model_config(cfg)
    assert edit_config.style_color and replace(edit_config, style_color=False) == plain.edit_config
    grown = build_edit_model(edit_config, str(tmp_path / "plain"))
    assert grown.style_color is not None and torch.equal(grown.decoder.layers[0].mlp.fc1.weight,
                                                         plain.decoder.layers[0].mlp.fc1.weight)
    with pytest.raises(ValueError, match="differs"):
        build_edit_model(replace(edit_config, depth=edit_config.depth + 1), str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="true or false"):
        edit_model_config(replace(cfg, options={"style_color": "yes"}))
    # from a base checkpoint the option builds the editor with the path
    trained_base.save_pretrained(tmp_path / "base")
    assert edit_model_config(replace(cfg, init_from=str(tmp_path / "base"))).style_color
