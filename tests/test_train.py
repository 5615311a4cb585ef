"""Tests for perchead/train.py: smoke training of the tiny preset on synthetic heads, resume, NaN stop."""

import json

import pytest
import torch

from perchead.train import (
    TASKS,
    Task,
    TrainConfig,
    build_reconstruct_model,
    index_stream,
    load_optimizer,
    main,
    reconstruct_trainable,
    register_task,
    save_optimizer,
    train,
)


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
    from perchead.model import PercHead

    model = PercHead.from_pretrained(out)
    assert model.config.name == "tiny"


def test_phase_parameter_split():
    from perchead.config import PercHeadConfig

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
        train(TrainConfig.preset_defaults("tiny", task="edit"), progress=False)
