"""Tests for serving.py: job folders only under the output root, the clean-up policy and its disk bound,
visitor-facing messages and API value checks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradio as gr  # noqa: E402

from serving import OutputStore, check_count, check_flag, visitor_error  # noqa: E402


def fill(folder: Path, n_bytes: int) -> None:
    (folder / "head.ply").write_bytes(b"\0" * n_bytes)


def test_job_folders_are_random_children_of_the_root(tmp_path):
    store = OutputStore(tmp_path / "out")
    a, b = store.new_folder("abc"), store.new_folder("../../x")
    assert a.parent == b.parent == (tmp_path / "out").resolve()
    assert a != b and len(a.name) == 16 and all(c in "0123456789abcdef" for c in a.name)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("target", ["..", ".", "../outside", "/etc", "a/../../outside"])
def test_nothing_outside_the_root_can_be_removed(tmp_path, target):
    (tmp_path / "outside").mkdir()
    store = OutputStore(tmp_path / "out")
    with pytest.raises(RuntimeError, match="refusing"):
        store.remove(store.root / target)
    assert (tmp_path / "outside").is_dir() and store.root.is_dir()


def test_symlinked_job_folder_is_not_followed(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "file").write_text("keep")
    store = OutputStore(tmp_path / "out")
    (store.root / "0123456789abcdef").symlink_to(tmp_path / "precious")
    with pytest.raises(RuntimeError):
        store.remove(store.root / "0123456789abcdef")
    store.prune()
    assert (tmp_path / "precious" / "file").read_text() == "keep"


def test_session_end_deletes_only_that_sessions_finished_folders(tmp_path):
    store = OutputStore(tmp_path / "out")
    mine, running, other = store.new_folder("me"), store.new_folder("me"), store.new_folder("you")
    store.release(mine)
    store.release(other)
    assert store.end_session("me") == 1
    assert not mine.exists() and running.exists() and other.exists()
    store.release(running)  # the running job ended: the next prune deletes its folder
    store.prune()
    assert not running.exists() and other.exists()
    assert store.end_session(None) == 0 and store.end_session("nobody") == 0


def test_hostile_session_ids_are_never_filed(tmp_path):
    store = OutputStore(tmp_path / "out")
    for session in ("..", "/etc", "a b", "x" * 65, ""):
        folder = store.new_folder(session)
        store.release(folder)
        assert store.end_session(session) == 0 and folder.exists()


def test_old_folders_are_pruned_busy_ones_never(tmp_path):
    store = OutputStore(tmp_path / "out", max_age_s=60)
    old, busy = store.new_folder(), store.new_folder()
    store.release(old)
    long_ago = time.time() - 3600
    for folder in (old, busy):
        os.utime(folder, (long_ago, long_ago))
    store.prune()
    assert not old.exists() and busy.exists()


def test_disk_use_stays_under_the_cap_plus_one_job(tmp_path):
    """A stream of jobs (page or REST, no session ever ends): outputs stay within max_bytes + one job."""
    job_bytes, cap = 100_000, 1_000_000
    store = OutputStore(tmp_path / "out", max_age_s=3600, max_bytes=cap)
    peak = 0
    for _ in range(40):
        folder = store.new_folder(None)
        fill(folder, job_bytes)
        peak = max(peak, store.usage())
        store.release(folder)
    assert peak <= cap + job_bytes
    assert len(list(store.root.iterdir())) <= cap // job_bytes + 1


def test_visitor_error_hides_server_paths():
    error = visitor_error("cannot read /tmp/gradio/abc/photo.png or C:\\Users\\x\\a.png", "Bad")
    assert isinstance(error, gr.Error) and "/tmp" not in error.message and "Users" not in error.message
    assert error.print_exception is False


@pytest.mark.parametrize("value", ["no", "true", 1, 0, None, [True]])
def test_check_flag_refuses_non_booleans(value):
    with pytest.raises(gr.Error, match="true or false"):
        check_flag(value, "remove_background")
    assert check_flag(True, "x") is True and check_flag(False, "x") is False


@pytest.mark.parametrize("value,message", [(7.5, "whole number"), ("7", "whole number"), (True, "whole number"),
                                           (float("nan"), "whole number"), (float("inf"), "whole number"),
                                           (-1, "from 0 to 120"),
                                           (121, "from 0 to 120")])
def test_check_count_refuses_fractions_and_out_of_range(value, message):
    with pytest.raises(gr.Error, match=message):
        check_count(value, "turntable_frames", 0, 120)
    assert check_count(60.0, "x", 0, 120) == 60 and isinstance(check_count(60.0, "x", 0, 120), int)


@pytest.mark.parametrize("zero_gpu", [False, True])
def test_the_model_loads_in_the_calling_thread_only_on_zero_gpu(monkeypatch, zero_gpu):
    """On ZeroGPU the model must reach ``cuda`` in the thread that imported ``spaces`` (before ``launch()``);
    elsewhere it loads in the background so the page is up at once."""
    import threading

    import spaces

    from serving import ModelHolder

    monkeypatch.setattr(spaces.config.Config, "zero_gpu", zero_gpu)
    caller, loaded_in = threading.current_thread(), []

    class Probe(ModelHolder):
        def load(self):
            loaded_in.append(threading.current_thread())
            return object(), "probe", ""

    holder = Probe(None).start()
    assert holder.ready() and holder.description == "probe"
    assert (loaded_in[0] is caller) == zero_gpu


def test_a_folder_that_vanishes_mid_scan_is_skipped_not_an_error(tmp_path):
    """Gradio deletes its temp folders at any time: measuring one that just went away must not fail a request."""
    from serving import _entry_row

    (tmp_path / "gone").mkdir()
    fill(tmp_path / "gone", 10)
    (tmp_path / "kept").mkdir()
    fill(tmp_path / "kept", 7)
    entries = {entry.name: entry for entry in os.scandir(tmp_path)}
    for path in (tmp_path / "gone").iterdir():
        path.unlink()
    (tmp_path / "gone").rmdir()
    assert _entry_row(entries["gone"]) is None
    assert _entry_row(entries["kept"])[1:] == (tmp_path / "kept", 7)


def test_uploads_admitted_together_hold_their_room_until_they_end(tmp_path):
    """Uploads whose headers arrive before their bodies must not all see the same free room."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    store = OutputStore(uploads / "perchead", max_bytes=1000, uploads=uploads)
    assert store.admit_upload(600)
    assert not store.admit_upload(600)  # the first one's body is still arriving
    store.upload_done(600)
    assert store.admit_upload(600)


def test_files_gradio_keeps_for_good_are_never_evicted(tmp_path):
    """Examples are cached once at start-up into the upload folder and must outlive the age limit."""
    uploads = tmp_path / "uploads"
    (uploads / "examplehash").mkdir(parents=True)
    (uploads / "examplehash" / "photo.jpg").write_bytes(b"x" * 10)
    (uploads / "oldupload").mkdir()
    (uploads / "oldupload" / "a.png").write_bytes(b"x" * 10)
    old = time.time() - 7200
    for path in (uploads / "examplehash", uploads / "oldupload"):
        os.utime(path, (old, old))
    store = OutputStore(uploads / "perchead", max_age_s=3600, uploads=uploads)
    store.kept = lambda: {str(uploads / "examplehash" / "photo.jpg")}
    assert store.admit_upload(10)
    assert (uploads / "examplehash" / "photo.jpg").is_file()
    assert not (uploads / "oldupload").exists()


def test_a_session_whose_folders_are_gone_leaves_no_entry(tmp_path):
    store = OutputStore(tmp_path / "out")
    folder = store.new_folder("api-client-1")
    store.release(folder)
    store.remove(folder)
    assert store._sessions == {}
