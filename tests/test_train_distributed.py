"""Tests for the data parallelism of perchead/training/train.py: the tiny preset on 2 CPU processes (gloo).

Two processes with the global batch split between them must train exactly what one process trains with
that batch: the same samples, the same initial weights, averaged gradients. The run is stopped by a
simulated crash after its first checkpoint and resumed on 2 processes, so resuming is covered as well.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from perchead.training.config import TrainConfig, process_seed
from perchead.training.train import per_process_batch, train

pytestmark = pytest.mark.slow

STEPS = dict(phase1_steps=4, phase2_steps=1, batch_size=4, n_targets=2, save_every=2)
CRASH_IN_STEP = 3  # after the checkpoint of step 2

# Run by torchrun in each process: the normal command line, plus the rank's own final weights (to compare
# the processes with each other) and, on request, a crash in the middle of a step.
WORKER = textwrap.dedent('''
    import dataclasses, os, sys
    from safetensors.torch import save_file
    from perchead.training import train as T
    from perchead.training.config import process_seed

    crash_in_step = int(os.environ.get("CRASH_IN_STEP", "0"))  # counted from this launch's first step
    built, steps = [], [0]
    base = T.TASKS["reconstruct"]

    def build_model(config, init_from):
        built.append(base.build_model(config, init_from))
        return built[-1]

    def after_step(model):
        steps[0] += 1
        if steps[0] == crash_in_step:
            raise SystemExit("stopped on purpose")

    T.register_task("reconstruct", dataclasses.replace(base, build_model=build_model, after_step=after_step))
    argv = sys.argv[1:]
    T.main(argv)
    out = argv[argv.index("--output") + 1]
    save_file(built[-1].checkpoint_state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.safetensors"),
              metadata={"augment_seed": str(process_seed(0))})
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, out, extra_env=None, resume=False) -> subprocess.CompletedProcess:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    args = ["--preset", "tiny", "--data", "synthetic", "--output", str(out), "--no-progress"]
    for key, value in STEPS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    if resume:
        args.append("--resume")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _losses(folder):
    return {r["step"]: r["total"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())}


def test_two_processes_train_what_one_process_trains(tmp_path):
    # one process, the whole global batch of 4, uninterrupted
    single = tmp_path / "single"
    torch.manual_seed(123)  # the loop seeds itself: the caller's random state must not matter
    train(TrainConfig.preset_defaults("tiny", output=str(single), **STEPS), progress=False)

    # two processes, 2 samples each: crashed in step 3, then resumed from the checkpoint of step 2
    multi = tmp_path / "multi"
    crashed = _torchrun(tmp_path, multi, {"CRASH_IN_STEP": str(CRASH_IN_STEP)})
    assert crashed.returncode != 0 and "stopped on purpose" in crashed.stderr + crashed.stdout
    assert json.loads((multi / "checkpoint" / "state.json").read_text())["step"] == 2
    assert load_file(str(multi / "checkpoint" / "rng.safetensors"))["cpu_rng"].shape[0] == 2  # one row per rank
    resumed = _torchrun(tmp_path, multi, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 processes, global batch 4 (2 per process)" in resumed.stdout
    assert "resuming from" in resumed.stdout

    # (a) both processes end with identical weights
    rank0, rank1 = load_file(str(multi / "rank0.safetensors")), load_file(str(multi / "rank1.safetensors"))
    seeds = [safe_open(str(multi / f"rank{r}.safetensors"), "pt").metadata()["augment_seed"] for r in (0, 1)]
    assert seeds[0] == "0" and seeds[1] != "0"  # the processes augment their shares independently
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # (b) … which are the single process's weights, up to rounding, and the logged losses are its losses
    ours, theirs = load_file(str(multi / "model.safetensors")), load_file(str(single / "model.safetensors"))
    for key in ours:
        torch.testing.assert_close(ours[key], rank0[key], rtol=0, atol=0)  # rank 0 wrote the final weights
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)
    loss_multi, loss_single = _losses(multi), _losses(single)
    assert sorted(loss_multi) == sorted(loss_single) == [1, 2, 3, 4, 5]
    for step, value in loss_single.items():
        assert loss_multi[step] == pytest.approx(value, rel=1e-5), step
    # not vacuous: training moved the weights far more than the tolerance, and the loss changed
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    torch.manual_seed(TrainConfig.preset_defaults("tiny").seed)
    fresh = PercHead(PercHeadConfig.preset("tiny")).checkpoint_state_dict()
    moved = max((theirs[k] - fresh[k]).abs().max().item() for k in theirs)
    assert moved > 1e-3
    assert len(set(loss_single.values())) == 5


def test_global_batch_must_split_over_the_processes():
    assert per_process_batch(8, 2) == 4 and per_process_batch(3, 1) == 3
    assert process_seed(5) == 5  # one process: the seed as given
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        per_process_batch(3, 2)
