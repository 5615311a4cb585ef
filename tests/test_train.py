"""Tests for perchead/training/train.py: smoke training of the tiny preset on synthetic heads, resume, NaN stop."""

import json

import pytest
import torch

from perchead.training.config import Task, TrainConfig
from perchead.training.reconstruct import build_reconstruct_model, reconstruct_trainable
from perchead.training.train import TASKS, index_stream, load_optimizer, main, register_task, save_optimizer, train


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--preset", "tiny", "--data", "synthetic", "--output", str(out), "--batch-size", "1",
              "--n-targets", "2", "--save-every", "1", "--no-progress"]
    main(common + ["--phase1-steps", "2", "--phase2-steps", "1"])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["phase"] == 2
    assert (out / "checkpoint" / "model" / "model.safetensors").is_file()
    assert (out / "checkpoint" / "optimizer.safetensors").is_file()
    logs = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in logs] == [1, 2, 3] and [r["phase"] for r in logs] == [1, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in logs)
    assert set(logs[0]) >= {"l1", "ssim", "mask", "total", "lr", "grad_norm"}
    assert "mask" not in logs[2]  # phase 2 (demo/tiny): L1 + SSIM on refined renders

    # resume: one more phase-2 step continues from the checkpoint (model, optimizer, scheduler)
    main(common + ["--phase1-steps", "2", "--phase2-steps", "2", "--resume"])
    assert "resuming from" in capsys.readouterr().out
    logs = _lines(out / "metrics.jsonl")
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    from perchead.models.perchead import PercHead

    model = PercHead.from_pretrained(out)
    assert model.config.name == "tiny"


def test_stop_at_ends_early_on_the_full_schedule(tmp_path):
    """--stop-at: the run ends (weights and checkpoint written) at that step, with the learning rates of the
    full-length run up to there."""
    common = ["--preset", "tiny", "--data", "synthetic", "--batch-size", "1", "--n-targets", "1", "--no-progress",
              "--phase1-steps", "4", "--phase2-steps", "0", "--warmup-steps", "1"]
    main(common + ["--output", str(tmp_path / "full")])
    main(common + ["--output", str(tmp_path / "cut"), "--stop-at", "2"])
    full, cut = _lines(tmp_path / "full" / "metrics.jsonl"), _lines(tmp_path / "cut" / "metrics.jsonl")
    assert [r["step"] for r in cut] == [1, 2]
    assert [r["lr"] for r in cut] == [r["lr"] for r in full[:2]] and cut[-1]["lr"] > full[-1]["lr"]
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 2
    assert (tmp_path / "cut" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="stop_at"):
        TrainConfig(phase1_steps=4, phase2_steps=0, stop_at=5)


def test_phase_parameter_split():
    from perchead.models.config import PercHeadConfig

    model = build_reconstruct_model(PercHeadConfig.preset("tiny"))
    p1 = {id(p) for p in reconstruct_trainable(model, 1)}
    p2 = {id(p) for p in reconstruct_trainable(model, 2)}
    assert p2 == {id(p) for p in model.refiner.parameters()}
    assert not p1 & p2 and len(p1) + len(p2) == len(list(model.parameters()))


def test_non_finite_loss_stops_training(tmp_path):
    def nan_loss(config, phase):
        def fn(model, batch):
            return sum(p.sum() for p in model.refiner.parameters()) * float("nan"), {"total": float("nan")}

        return fn

    register_task("nan_test", Task(build_reconstruct_model, nan_loss, reconstruct_trainable))
    try:
        cfg = TrainConfig.preset_defaults("tiny", output=str(tmp_path / "nan"), task="nan_test", batch_size=1,
                                          n_targets=1, phase1_steps=0, phase2_steps=2)
        with pytest.raises(FloatingPointError, match="at step 0"):
            train(cfg, progress=False)
    finally:
        TASKS.pop("nan_test")


def test_optimizer_state_round_trip(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.5)
    load_optimizer(opt2, tmp_path)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    torch.testing.assert_close(s1["state"][0]["exp_avg"], s2["state"][0]["exp_avg"])
    assert s2["param_groups"][0]["lr"] == 0.1


def test_index_stream_is_resumable_and_sharded():
    full = [i for i, _ in zip(index_stream(7, seed=3, start=0), range(20))]
    assert sorted(full[:7]) == list(range(7)) and sorted(full[7:14]) == list(range(7))
    resumed = [i for i, _ in zip(index_stream(7, seed=3, start=5), range(15))]
    assert resumed == full[5:20]
    r0 = [i for i, _ in zip(index_stream(7, 3, 0, rank=0, world=2), range(10))]
    r1 = [i for i, _ in zip(index_stream(7, 3, 0, rank=1, world=2), range(10))]
    assert r0 == full[0:20:2] and r1 == full[1:20:2]


def test_config_validation_and_presets():
    demo = TrainConfig.preset_defaults("demo")
    assert demo.phase_at(0) == 1 and demo.phase_at(demo.phase1_steps) == 2
    assert TrainConfig.preset_defaults("paper").batch_size == 8
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset_defaults("huge")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="unknown task"):
        train(TrainConfig.preset_defaults("tiny", task="no_such_task"), progress=False)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp16")
    from perchead.training.train import parse_args
    assert parse_args(["--mixed-precision", "no"])[0].mixed_precision == "no"
    assert parse_args([])[0].mixed_precision == "auto"


# ------------------------------------------------------------------------------------------ edit task (§3.5)
def test_edit_task_registered_with_cli_flags(tmp_path):
    from perchead.training.edit import build_edit_model
    from perchead.training.train import parse_args

    assert TASKS["edit"].trainable is reconstruct_trainable and TASKS["edit"].model_config is not None
    assert TASKS["reconstruct"].model_config is None  # reconstruction keeps PercHeadConfig.preset(preset)
    config, _, _ = parse_args(["--task", "edit", "--init-from", "base", "--style", "style_dir", "--preset", "tiny"])
    assert (config.task, config.init_from, config.style) == ("edit", "base", "style_dir")
    assert parse_args([])[0].style is None
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="--init-from"):
        train(TrainConfig.preset_defaults("tiny", task="edit", output=out), progress=False)
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="--style"):
        train(TrainConfig.preset_defaults("tiny", task="edit", output=out, init_from=str(tmp_path / "base")),
              progress=False)
    with pytest.raises(ValueError, match="EditConfig"):
        build_edit_model(PercHeadConfig.preset("tiny"), str(tmp_path / "base"))


def test_edit_loss_needs_labels_and_picks_other_views(monkeypatch):
    from types import SimpleNamespace

    from perchead.training import edit as edit_task
    from perchead.models.config import PercHeadConfig
    from perchead.training.edit import build_edit_loss, style_reference_views

    images = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1, 1, 1).expand(2, 3, 3, 4, 4)  # [B, V, 3, H, W]
    picked = style_reference_views({"target_images": images})
    assert picked.shape == (2, 3, 4, 4)
    for b in range(2):  # view v of subject b has value 3b + v
        assert 3 * b <= picked[b, 0, 0, 0] < 3 * b + 3

    class FakeStyle(torch.nn.Module):
        embed_dim = 4

    monkeypatch.setitem(edit_task._STYLE_ENCODERS, "fake", FakeStyle())
    loss_fn = build_edit_loss(TrainConfig.preset_defaults("tiny", task="edit", style="fake"), 1)
    with pytest.raises(ValueError, match="label map"):
        background_only = {"labels": torch.zeros(1, 8, 8, dtype=torch.long), "target_images": images[:1]}
        loss_fn(SimpleNamespace(config=PercHeadConfig.preset("tiny")), background_only)
    with pytest.raises(ValueError, match="eval-every"):
        build_edit_loss(TrainConfig.preset_defaults("tiny", task="edit", style="fake", eval_every=5), 1)


def test_edit_captions_follow_a_recoloured_head():
    from perchead.training.edit import caption_hair_color, replace_hair_color

    assert caption_hair_color("long dark brown hair, glasses") == "dark brown"
    assert caption_hair_color("bald, beard") is None
    assert replace_hair_color("long dark brown hair, glasses", "red") == "long red hair, glasses"
    assert replace_hair_color("brown hair with a fringe, brown skin", "blonde") == "blonde hair with a fringe, brown skin"
    with pytest.raises(ValueError, match="no hair colour"):
        replace_hair_color("bald, beard", "red")
    with pytest.raises(ValueError, match="unknown hair colour"):
        replace_hair_color("red hair", "chartreuse")


def test_edit_recolouring_balances_hair_colours():
    from perchead.data.augment import HAIR_CLASS
    from perchead.training.edit import caption_hair_color, recolor_batch

    b, size = 64, 8
    labels = torch.full((b, 2, size, size), HAIR_CLASS, dtype=torch.long)
    batch = {"caption": ["black hair, glasses"] * (b - 1) + ["bald"],
             "target_images": torch.full((b, 2, 3, size, size), 0.05), "target_labels": labels}
    out = recolor_batch(batch, 1.0, torch.Generator().manual_seed(0))
    colours = [caption_hair_color(c) for c in out["caption"][:-1]]
    assert len(set(colours)) >= 8  # drawn uniformly over the 11 colours, not the data's mostly dark ones
    assert out["caption"][-1] == "bald" and torch.equal(out["target_images"][-1], batch["target_images"][-1])
    blonde = [i for i, c in enumerate(colours) if c == "blonde"]
    if blonde:  # the painted hair is light now
        assert float(out["target_images"][blonde[0], :, :, 3, 3].mean()) > 0.3
    coloured = {**batch, "target_images": torch.rand(b, 2, 3, size, size)}  # hair whose pixels are not grey
    kept = recolor_batch(coloured, 0.0, torch.Generator().manual_seed(0))
    assert kept["caption"] == batch["caption"] and torch.equal(kept["target_images"], coloured["target_images"])


def test_edit_loss_styles_by_text_for_its_text_fraction(monkeypatch):
    from perchead.models.config import PercHeadConfig
    from perchead.training import edit as edit_task
    from perchead.training.edit import build_edit_loss

    seen = []

    class FakeStyle(torch.nn.Module):
        embed_dim = 4

        def encode_image(self, images):
            return torch.zeros(images.shape[0], 4)

        def encode_text(self, texts):
            return torch.ones(len(texts), 4)

    class FakeModel(torch.nn.Module):
        config = PercHeadConfig.preset("tiny")

        def forward(self, labels, style):
            seen.append(style.clone())
            raise StopIteration  # the loss itself is tested elsewhere

    monkeypatch.setitem(edit_task._STYLE_ENCODERS, "fake", FakeStyle())
    batch = {"labels": torch.ones(4, 8, 8, dtype=torch.long), "target_images": torch.rand(4, 2, 3, 8, 8),
             "caption": ["long red hair, glasses"] * 4}
    for fraction, expected in ((0.0, 0.0), (1.0, 1.0)):
        config = TrainConfig.preset_defaults("tiny", task="edit", style="fake",
                                             options={"text_fraction": fraction, "recolor_fraction": 0.0})
        with pytest.raises(StopIteration):
            build_edit_loss(config, 1)(FakeModel(), dict(batch))
        assert torch.all(seen[-1] == expected)
    with pytest.raises(ValueError, match="fraction"):
        build_edit_loss(TrainConfig.preset_defaults("tiny", task="edit", style="fake", options={"text_fraction": 2}), 1)
    with pytest.raises(ValueError, match="no option"):
        build_edit_loss(TrainConfig.preset_defaults("tiny", task="edit", style="fake", options={"augment": 0.5}), 1)


def test_reconstruct_augment_option_changes_only_the_inputs():
    from perchead.training.reconstruct import photo_like_predict, predict_from_image

    assert photo_like_predict(TrainConfig.preset_defaults("tiny"), 1) is predict_from_image  # off by default
    received = []

    class Echo(torch.nn.Module):
        def forward(self, image, mask):
            received.append((image, mask))
            return image

    predict = photo_like_predict(TrainConfig.preset_defaults("tiny", options={"augment": 1.0}), 1)
    image, mask = torch.rand(2, 3, 16, 16), torch.ones(2, 1, 16, 16)
    batch = {"image": image, "mask": mask, "target_images": torch.rand(2, 2, 3, 16, 16)}
    targets = batch["target_images"].clone()
    predict(Echo(), batch)
    assert not torch.equal(received[-1][0], image) and torch.equal(batch["target_images"], targets)
    with pytest.raises(ValueError, match="fraction"):
        photo_like_predict(TrainConfig.preset_defaults("tiny", options={"augment": -1}), 1)


def test_weights_recipe_commands_parse_and_chain():
    """`python3 tasks.py weights`: every training stage parses, writes where the recipe copies from, and
    starts only from the outputs of earlier stages; docs/training.md shows the same commands."""
    import importlib.util
    import shlex
    from pathlib import Path

    from perchead.training.train import parse_args

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("perchead_tasks", root / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    done: set[str] = set()
    for (folder, args, target), result in zip(tasks.WEIGHTS_RECIPE, tasks.RECIPE_RESULTS):
        if args[:2] == ["-m", "perchead.training.framing"]:  # the photo framing's files, shipped in the package
            assert args[args.index("--output") + 1] == folder and (root / target / result).is_file()
            continue
        assert args[:2] == ["-m", "perchead.training.train"]
        rest = args[2:]
        for flag in ("--init-from", "--style"):
            if flag in rest:
                assert rest[rest.index(flag) + 1] in done, f"{folder}: {flag} names a later or unknown stage"
        config, resume, _ = parse_args(rest)
        assert config.output == folder and not resume
        done.add(folder)
    targets = [target for _, _, target in tasks.WEIGHTS_RECIPE]
    assert targets[-1] == "weights_card/"  # the last base stage is bundled
    assert {"weights_card/style", "weights_card/parser", "weights_card/edit", "perchead/photo"} <= set(targets)
    page = (root / "docs" / "training.md").read_text().replace("\\\n", " ")
    shown = [shlex.split(line)[1:] for line in page.splitlines()
             if line.startswith(".venv/bin/python -m perchead.training.train ")]
    assert shown == [args for _, args, _ in tasks.WEIGHTS_RECIPE if args[:2] == ["-m", "perchead.training.train"]]
