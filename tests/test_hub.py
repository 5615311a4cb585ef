"""Loading checkpoints from the Hub and publishing them, over the Hub's own HTTP protocol.

A stand-in Hub (tests/hub_server.py) serves on 127.0.0.1 and ``HF_ENDPOINT`` (or huggingface_hub's
constants, in this process) points at it, so ``snapshot_download``, ``create_repo`` and ``upload_folder`` run
unchanged. Repos hold the tiny checkpoints the app tests write: the base model at the top and
``edit/``, ``style/``, ``parser/`` beside it, with ``model_index.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub_server import HubServer
from perchead.models.hub import (
    BASE_PARTS, EDIT_PARTS, INDEX_NAME, PARTS, allow_patterns, card_metadata, check_parts, check_safetensors,
    index_dict, publish, read_index, write_index,
)  # fmt: skip

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "head2_profile.png"
BUNDLED = ROOT / "weights_card"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_card(folder: Path, seed: int = 0) -> Path:
    """A checkpoint root like weights_card/: a tiny base model, tiny editing parts, the index and the card."""
    import torch

    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead
    from test_edit import make_edit_folder

    torch.manual_seed(seed)
    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(folder)
    make_edit_folder(folder)
    shutil.copy(BUNDLED / "README.md", folder / "README.md")
    write_index(folder)
    return folder


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cards")
    return tiny_card(tmp / "v1", seed=0), tiny_card(tmp / "v2", seed=1)


@pytest.fixture(scope="module")
def hub(cards):
    """The stand-in Hub with: org/tiny (v1 then v2 on main), and one broken repo per failure."""
    import torch

    v1, v2 = cards
    server = HubServer().start()
    server.first = server.add_folder("org/tiny", v1)
    server.second = server.add_folder("org/tiny", v2)
    config = (v1 / "config.json").read_bytes()
    weights = (v1 / "model.safetensors").read_bytes()
    server.commit("org/no-weights", {"config.json": config})
    pickle = Path(v1.parent / "pytorch_model.bin")
    torch.save({"w": torch.zeros(2)}, pickle)  # a real pickle: it must never be downloaded or opened
    server.commit("org/pickle", {"config.json": config, "pytorch_model.bin": pickle.read_bytes()})
    server.commit("org/corrupt", {"config.json": config, "model.safetensors": weights[: len(weights) // 2]})
    server.commit("org/no-edit", {"config.json": config, "model.safetensors": weights})
    yield server
    server.stop()


@pytest.fixture
def online(hub, monkeypatch, tmp_path):
    """huggingface_hub in this process talks to the stand-in Hub, with an empty cache; returns the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return cache


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.checkpoint_state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- the index
def test_bundled_card_has_the_index_and_every_part():
    assert json.loads((BUNDLED / INDEX_NAME).read_text()) == index_dict(PARTS)
    assert list(read_index(BUNDLED, "weights_card")) == ["base", "edit", "style", "parser"]
    check_parts(BUNDLED, list(PARTS), "weights_card")  # all files there, sound safetensors headers


def test_index_with_a_moved_part_is_refused(cards, tmp_path):
    shutil.copytree(cards[0], tmp_path / "card")
    index = json.loads((tmp_path / "card" / INDEX_NAME).read_text())
    index["parts"]["edit"]["folder"] = "editor"
    (tmp_path / "card" / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="puts part 'edit' in folder 'editor'"):
        check_parts(tmp_path / "card", ["edit"], "card")


def test_patterns_fetch_only_what_a_pipeline_needs():
    assert allow_patterns(BASE_PARTS) == [INDEX_NAME, "config.json", "model.safetensors"]
    assert "edit/model.safetensors" in allow_patterns(EDIT_PARTS) and "model.safetensors" not in allow_patterns(EDIT_PARTS)
    assert all(p.endswith((".json", ".safetensors")) for p in allow_patterns(EDIT_PARTS))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:4], "too short"),
    (lambda b: (10**9).to_bytes(8, "little") + b[8:], "claims"),
    (lambda b: b[:8] + b"{not json" + b[17:], "not safetensors JSON"),
])  # fmt: skip
def test_corrupt_safetensors_are_named(cards, tmp_path, damage, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(damage((cards[0] / "model.safetensors").read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        check_safetensors(path, "x/model.safetensors")
    assert str(info.value).startswith("x/model.safetensors is not a valid safetensors file") and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- download
def test_base_and_editing_models_load_from_one_repo(hub, online, cards):
    from perchead.models.perchead import PercHead
    from perchead.pipelines.edit import PercHeadEditPipeline
    from perchead.pipelines.reconstruct import PercHeadPipeline

    hub.requests.clear()
    pipe = PercHeadPipeline.from_pretrained("org/tiny", device="cpu")
    fetched = {path.rsplit("/", 1)[-1] for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {INDEX_NAME, "config.json", "model.safetensors"}  # no editing weights for the base pipeline
    assert not any("/edit/" in p for _, p in hub.requests)
    assert same_state(state_of(pipe.model), state_of(PercHead.from_pretrained(cards[1])))  # main = the second commit
    edit = PercHeadEditPipeline.from_pretrained("org/tiny", device="cpu")
    assert edit.editor.edit_config.style_dim == edit.style_encoder.embed_dim
    snapshots = list((online / "models--org--tiny" / "snapshots").iterdir())
    assert [s.name for s in snapshots] == [hub.second]  # one cached snapshot serves both pipelines


def test_a_pinned_revision_loads_that_commit(hub, online, cards):
    from perchead.models.perchead import PercHead
    from perchead.pipelines.reconstruct import PercHeadPipeline

    first = state_of(PercHead.from_pretrained(cards[0]))
    pinned = PercHeadPipeline.from_pretrained("org/tiny", revision=hub.first, device="cpu")
    assert same_state(state_of(pinned.model), first)
    assert not same_state(state_of(PercHeadPipeline.from_pretrained("org/tiny", device="cpu").model), first)


def test_the_cache_serves_offline_and_without_the_server(hub, online, monkeypatch):
    from huggingface_hub import constants

    from perchead.pipelines.reconstruct import PercHeadPipeline

    PercHeadPipeline.from_pretrained("org/tiny", device="cpu")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    PercHeadPipeline.from_pretrained("org/tiny", device="cpu")
    assert hub.requests == []
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache and HF_HUB_OFFLINE is set"):
        PercHeadPipeline.from_pretrained("org/no-edit", device="cpu")


@pytest.mark.parametrize("repo, kind, message", [
    ("org/nothing", FileNotFoundError, "Hub repo 'org/nothing' was not found"),
    ("org/no-weights", FileNotFoundError, "Hub repo 'org/no-weights' has no model.safetensors"),
    ("org/pickle", ValueError, "has pytorch_model.bin but no model.safetensors: perchead loads safetensors only"),
    ("org/corrupt", ValueError, "Hub repo 'org/corrupt': model.safetensors is not a valid safetensors file"),
])  # fmt: skip
def test_each_bad_repo_gives_one_clear_line(hub, online, repo, kind, message):
    from perchead.pipelines.reconstruct import PercHeadPipeline

    with pytest.raises(kind) as info:
        PercHeadPipeline.from_pretrained(repo, device="cpu")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not any(p.endswith(".bin") for _, p in hub.requests)  # the pickle is never fetched


def test_missing_revision_and_missing_editing_parts(hub, online):
    from perchead.pipelines.edit import PercHeadEditPipeline
    from perchead.pipelines.reconstruct import PercHeadPipeline

    with pytest.raises(FileNotFoundError, match="revision 'v9'.*no such revision"):
        PercHeadPipeline.from_pretrained("org/tiny", revision="v9", device="cpu")
    with pytest.raises(FileNotFoundError, match="has no edit/config.json"):
        PercHeadEditPipeline.from_pretrained("org/no-edit", device="cpu")


@pytest.mark.parametrize("repo, reason", [
    ("org/nothing", "was not found"),
    ("org/no-weights", "has no model.safetensors"),
    ("org/pickle", "loads safetensors only"),
    ("org/corrupt", "not a valid safetensors file"),
])  # fmt: skip
def test_the_app_falls_back_to_the_bundled_model_with_the_reason(hub, online, repo, reason):
    from serving import load_pipeline

    pipeline, description, notice = load_pipeline(repo, "cpu")
    assert description.startswith("the bundled demo model")
    assert notice.startswith(f"Could not load the requested model `{repo}` (") and reason in notice
    assert notice.endswith("using the bundled one instead.") and "\n" not in notice


def test_editing_models_fall_back_to_the_bundled_ones(hub, online):
    from serving import ModelHolder, load_edit_holder

    holder = load_edit_holder("org/corrupt", "cpu")
    assert holder.available  # a repo id: the tab is built, the models are fetched in the background
    assert holder.ready() and holder.description == "the bundled editing models"
    line = holder.status_line()
    assert line.startswith("⚠️ Could not load the requested editing models `org/corrupt` (") and "has no edit/" in line
    assert line.endswith("Editing: ready.")
    good = load_edit_holder("org/tiny", "cpu", revision=hub.first)
    assert good.ready() and good.status_line() == "Editing: ready."
    status = ModelHolder("org/tiny", "cpu", hub.first).start()
    assert status.ready() and status.status_markdown() == f"Ready: the model `org/tiny@{hub.first}`, on the CPU."


# ---------------------------------------------------------------------------------------------- publish
def test_publish_dry_run_lists_files_and_metadata(cards, hub, tmp_path):
    (cards[0] / "notes.txt").write_text("not uploaded")
    try:
        out = subprocess.run([sys.executable, "-m", "perchead.models.hub", "publish", "org/dry", "--dry-run",
                              "--folder", str(cards[0])], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0"))
    finally:
        (cards[0] / "notes.txt").unlink()
    assert out.returncode == 0, out.stderr
    size = (cards[0] / "edit" / "model.safetensors").stat().st_size
    assert f"{size:,d}  edit/model.safetensors" in out.stdout and "model_index.json" in out.stdout
    assert "left out (not safetensors/JSON/card): notes.txt" in out.stdout
    assert 'card metadata: {"library_name": "perchead", "license": "apache-2.0", "pipeline_tag": "image-to-3d"' in out.stdout
    assert "org/dry" not in hub.repos


def test_publish_refuses_bad_cards_and_folders(cards, tmp_path):
    shutil.copytree(cards[0], tmp_path / "card")
    card = tmp_path / "card" / "README.md"
    card.write_text(card.read_text().replace("pipeline_tag: image-to-3d\n", "pipeline_tag: text-generation\n")
                    .replace("license: apache-2.0\n", ""))
    with pytest.raises(ValueError, match="license is missing; pipeline_tag 'text-generation' is not one of"):
        card_metadata(tmp_path / "card")
    (tmp_path / "card" / INDEX_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        publish(tmp_path / "card", "org/x", dry_run=True)


def test_publish_then_download_is_bit_identical(cards, hub, online):
    from huggingface_hub import snapshot_download

    from perchead.pipelines.edit import PercHeadEditPipeline

    out = subprocess.run([sys.executable, "-m", "perchead.models.hub", "publish", "org/published", "--revision", "v1",
                          "--folder", str(cards[0])], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_TOKEN="hf_test_token"))
    assert out.returncode == 0, out.stderr
    repo = hub.repos["org/published"]
    assert set(repo["branches"]) == {"main", "v1"} and len(repo["messages"]) == 1  # one commit, on the branch
    assert out.stdout.strip().endswith(f"committed {repo['branches']['v1']} to org/published@v1")
    folder = Path(snapshot_download("org/published", revision="v1"))
    sent = {p.relative_to(cards[0]).as_posix() for p in cards[0].rglob("*") if p.is_file()}
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {".gitattributes"}
    assert got == sent
    for rel in sent:
        assert sha256(folder / rel) == sha256(cards[0] / rel), rel
    PercHeadEditPipeline.from_pretrained("org/published", revision="v1", device="cpu")  # and it loads


def test_publish_without_a_token_fails_in_one_line(cards, hub):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "perchead.models.hub", "publish", "org/anonymous", "--folder",
                          str(cards[0])], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(env, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HOME=str(cards[0].parent / "home")))
    assert out.returncode == 1 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "org/anonymous" not in hub.repos


# ---------------------------------------------------------------------------------------------- the app
@pytest.mark.slow
def test_app_loads_from_the_hub_then_from_the_cache_with_the_server_stopped(cards, tmp_path):
    from gradio_client import Client, handle_file

    from perchead.geometry.gaussians import load_ply
    from test_app import fitted_count, reconstruct, start_app, stop

    server = HubServer().start()
    server.add_folder("org/space", cards[0])
    n = json.loads((cards[0] / "config.json").read_text())["template"]["n_gaussians"]
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(tmp_path / "cache")}
    args = ["--model", "org/space", "--edit-model", "org/space"]
    try:
        for run in ("hub", "cache"):
            process, url, _ = start_app(args, tmp_path, env)
            try:
                client = Client(url, verbose=False)
                ply, *_, notes = reconstruct(client, EXAMPLE)
                assert load_ply(ply).num_gaussians == fitted_count(n)  # the tiny model, not the bundled one
                assert "Could not load" not in notes
                _, _, segment_notes = client.predict(handle_file(str(EXAMPLE)), True, True, False, api_name="/segment")
                assert "parsed in" in segment_notes  # waits for the editing models: from the repo, not the bundle
                log = (tmp_path / f"app-{url.rsplit(':', 1)[1].strip('/')}.log").read_text()
                assert "could not load" not in log.lower()
            finally:
                stop(process)
            if run == "hub":
                assert any(p.endswith("/resolve/" + server.repos["org/space"]["branches"]["main"] + "/edit/model.safetensors")
                           for _, p in server.requests)
                server.stop()  # the second start must not need it
    finally:
        server.stop()


@pytest.mark.slow
def test_app_shows_the_fallback_notice_for_a_corrupt_repo(hub, tmp_path):
    from gradio_client import Client

    from test_app import reconstruct, start_app, stop

    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "cache")}
    process, url, _ = start_app(["--model", "org/corrupt", "--edit-model", "none"], tmp_path, env)
    try:
        ply, *_, notes = reconstruct(Client(url, verbose=False), EXAMPLE)
        assert ply.endswith(".ply")
        assert ("Could not load the requested model `org/corrupt` (Hub repo 'org/corrupt': model.safetensors is not a "
                "valid safetensors file") in notes
    finally:
        stop(process)
