"""One checkpoint folder or Hugging Face Hub repo for every model: its index, its download and its upload.

A checkpoint root holds the base model at its top and the editing parts in sub-folders, and an index,
``model_index.json`` (like diffusers'), naming each part, its folder and its class::

    model_index.json            {"format": "perchead-checkpoint", "parts": {"base": {"folder": "", ...}, ...}}
    config.json, model.safetensors                      base     PercHead
    edit/config.json, edit/model.safetensors            edit     PercHeadEditor
    style/open_clip_config.json, style/model.safetensors  style  StyleEncoder
    parser/config.json, parser/model.safetensors        parser   FaceParser

:func:`fetch_parts` turns a folder or a repo id into a local folder holding the parts a pipeline needs
(one ``snapshot_download`` with ``allow_patterns``; cached; offline under ``HF_HUB_OFFLINE=1``) and checks
them: every file present, weights in safetensors (a pickle is never downloaded or opened) with a sound
header. Every failure is one line naming the repo or folder, the file and what to do.
:func:`publish` uploads a checkpoint folder with its model card in one commit
(``python -m perchead.models.hub publish REPO_ID``, behind ``python3 tasks.py publish``).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

INDEX_NAME = "model_index.json"
INDEX_FORMAT = "perchead-checkpoint"
CARD_NAME = "README.md"
SAFETENSORS = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # weights perchead never loads
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
PIPELINE_TAGS = ("image-to-3d",)  # what the card's pipeline_tag may say
CARD_KEYS = ("license", "library_name", "pipeline_tag", "tags")  # the card metadata publish requires


@dataclass(frozen=True)
class Part:
    """One model of a checkpoint root.

    Attributes:
        name: ``base``, ``edit``, ``style`` or ``parser``.
        folder: its sub-folder ("" = the root).
        cls: the class that loads it (checked against the index; never imported by name).
        files: the files it needs (config and weights).
    """

    name: str
    folder: str
    cls: str
    files: tuple[str, ...]

    def path(self, file: str) -> str:
        """``file`` relative to the checkpoint root (POSIX, as on the Hub)."""
        return f"{self.folder}/{file}" if self.folder else file


PARTS: dict[str, Part] = {
    "base": Part("base", "", "perchead.models.perchead.PercHead", ("config.json", "model.safetensors")),
    "edit": Part("edit", "edit", "perchead.models.editor.PercHeadEditor", ("config.json", "model.safetensors")),
    "style": Part("style", "style", "perchead.models.style_encoder.StyleEncoder",
                  ("open_clip_config.json", "model.safetensors")),
    "parser": Part("parser", "parser", "perchead.models.face_parser.FaceParser", ("config.json", "model.safetensors")),
}
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks huggingface_hub not to use the network (its own truthy values)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


BASE_PARTS = ("base",)
EDIT_PARTS = ("edit", "style", "parser")


# ---------------------------------------------------------------------------------------------- index
def index_dict(parts: Iterable[str]) -> dict[str, Any]:
    """The ``model_index.json`` content of a root holding ``parts``."""
    return {
        "format": INDEX_FORMAT,
        "format_version": 1,
        "parts": {name: {"folder": PARTS[name].folder, "class": PARTS[name].cls, "files": list(PARTS[name].files)}
                  for name in parts},
    }


def write_index(root: str | os.PathLike) -> Path:
    """Writes ``model_index.json`` into ``root`` naming the parts whose files are all there. Returns its path.

    Raises:
        FileNotFoundError: ``root`` holds no part at all.
    """
    root = Path(root)
    present = [name for name, part in PARTS.items() if all((root / part.path(f)).is_file() for f in part.files)]
    if not present:
        raise FileNotFoundError(f"{root} holds no checkpoint (no config.json + model.safetensors)")
    path = root / INDEX_NAME
    path.write_text(json.dumps(index_dict(present), indent=2) + "\n")
    return path


def read_index(root: Path, source: str) -> dict[str, Any] | None:
    """The parts listed by ``root/model_index.json`` (None without one).

    Raises:
        ValueError: the index is not JSON, has another format, or names a part in another folder or class.
    """
    path = root / INDEX_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: {INDEX_NAME} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("parts"), dict):
        raise ValueError(f"{source}: {INDEX_NAME} is not a perchead index (needs format {INDEX_FORMAT!r} and parts)")
    for name, entry in data["parts"].items():
        known = PARTS.get(name)
        if known is None or not isinstance(entry, dict):
            raise ValueError(f"{source}: {INDEX_NAME} names an unknown part {name!r} (known: {', '.join(PARTS)})")
        if entry.get("folder", known.folder) != known.folder or entry.get("class", known.cls) != known.cls:
            raise ValueError(f"{source}: {INDEX_NAME} puts part {name!r} in folder {entry.get('folder')!r} with class "
                             f"{entry.get('class')!r}; perchead expects {known.folder or '(root)'!r} / {known.cls}")
    return data["parts"]


# -------------------------------------------------------------------------------------------- checks
def check_safetensors(path: Path, label: str) -> None:
    """Checks a safetensors file's header (length, JSON, tensor offsets within the file) without loading it.

    Raises:
        ValueError: ``label`` is not a sound safetensors file (truncated, corrupt, or another format).
    """
    size = path.stat().st_size
    why = None
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            why = f"{size} bytes, too short for a header"
        else:
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER_BYTES):
                why = f"its header claims {n} bytes in a {size}-byte file"
            else:
                try:
                    header = json.loads(file.read(n))
                    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
                    if 8 + n + end != size:
                        why = f"its tensors need {8 + n + end} bytes but the file has {size} (truncated or padded)"
                except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError):
                    why = "its header is not safetensors JSON"
    if why:
        raise ValueError(f"{label} is not a valid safetensors file ({why}); save it again with save_pretrained "
                         "and re-upload it")


def check_parts(root: Path, parts: Sequence[str], source: str, listing: Sequence[str] | None = None) -> None:
    """Checks that ``root`` holds ``parts`` whole: listed by its index (if any), every file there, sound safetensors.

    Args:
        root: the local folder (a folder given by the user or a Hub snapshot).
        parts: names in :data:`PARTS`.
        source: how messages name the checkpoint (``"Hub repo 'org/name' (revision main)"``, ``"folder …"``).
        listing: every file of the checkpoint (the repo's tree), to tell pickle-only weights from missing
            ones; default: the files under ``root``.

    Raises:
        FileNotFoundError: a part or a file is missing.
        ValueError: the weights are a pickle (never loaded) or a corrupt safetensors file; a bad index.
    """
    index = read_index(root, source)
    if index is not None:
        absent = [name for name in parts if name not in index]
        if absent:
            raise FileNotFoundError(f"{source} has no {', '.join(absent)} model (its {INDEX_NAME} lists "
                                    f"{', '.join(index) or 'nothing'})")
    if listing is None:
        listing = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    for name in parts:
        part = PARTS[name]
        for file in part.files:
            rel = part.path(file)
            if (root / rel).is_file():
                continue
            if file.endswith(SAFETENSORS):
                pickles = sorted(p for p in listing if p.endswith(PICKLE_SUFFIXES)
                                 and ("/" not in p if not part.folder else p.startswith(part.folder + "/")))
                if pickles:
                    raise ValueError(f"{source} has {pickles[0]} but no {rel}: perchead loads safetensors only and "
                                     "never unpickles weights; convert them with save_pretrained")
            raise FileNotFoundError(f"{source} has no {rel} (the {name} model needs {' + '.join(part.files)})")
        for file in part.files:
            if file.endswith(SAFETENSORS):
                check_safetensors(root / part.path(file), f"{source}: {part.path(file)}")


def allow_patterns(parts: Sequence[str]) -> list[str]:
    """The ``snapshot_download`` patterns of ``parts``: the index and their JSON and safetensors files only."""
    patterns = [INDEX_NAME]
    for name in parts:
        part = PARTS[name]
        patterns += [part.path(file) for file in part.files]
        if part.folder:
            patterns += [f"{part.folder}/*.json"]  # e.g. the parser's preprocessor_config.json
    return patterns


def looks_like_folder(text: str) -> bool:
    """True for strings that can only be paths (``./x``, ``/x``, ``~/x``, ``a/b/c``), never a repo id."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


# ------------------------------------------------------------------------------------------ download
def fetch_parts(
    repo_id_or_folder: str | os.PathLike,
    parts: Sequence[str],
    revision: str | None = None,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding ``parts`` of a checkpoint, checked (see :func:`check_parts`).

    Args:
        repo_id_or_folder: a checkpoint folder, or a Hub model repo id (``"org/name"``).
        parts: names in :data:`PARTS`, e.g. :data:`BASE_PARTS` or :data:`EDIT_PARTS`.
        revision: Hub branch, tag or commit (ignored for folders); default ``main``.
        token: Hub token (default: the saved one / ``HF_TOKEN``).
        cache_dir: Hub cache (default: huggingface_hub's).
        local_files_only: never ask the Hub (also when ``HF_HUB_OFFLINE=1``).

    Returns:
        the folder: ``repo_id_or_folder`` itself, or the Hub cache's snapshot of the revision.

    Raises:
        FileNotFoundError: no such folder, repo, revision or file; not cached while offline.
        ValueError: neither a folder nor a repo id; pickle or corrupt weights; a bad index.
    """
    text = str(repo_id_or_folder)
    path = Path(text).expanduser()
    if path.is_dir():
        check_parts(path, parts, f"checkpoint folder {text!r}")
        return path
    if path.exists():
        raise FileNotFoundError(f"{text!r} is a file, not a checkpoint folder")
    if looks_like_folder(text):
        raise FileNotFoundError(f"checkpoint folder {text!r} does not exist")
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )  # fmt: skip

    source = f"Hub repo {text!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        folder = Path(snapshot_download(text, revision=revision, allow_patterns=allow_patterns(parts), token=token,
                                        cache_dir=cache_dir, local_files_only=local_files_only))
    except HFValidationError:
        raise ValueError(f"{text!r} is neither a checkpoint folder nor a Hub repo id ('org/name')") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{source}: the repo has no such revision (branch, tag or commit)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{source} was not found (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if hub_offline() or local_files_only else "the Hub could not be reached"
        raise FileNotFoundError(f"{source} is not in the local Hub cache and {why}") from None
    except Exception as error:  # noqa: BLE001 - any other Hub or network failure, in one line
        first = str(error).splitlines()[0][:200] if str(error) else ""
        raise FileNotFoundError(f"{source} could not be downloaded ({type(error).__name__}: {first})") from None
    try:
        listing = [f.path for f in get_cached_repo_tree(text, revision=folder.name, cache_dir=cache_dir)]
    except Exception:  # noqa: BLE001 - no cached listing (e.g. an old cache): check the files alone
        listing = None
    check_parts(folder, parts, source, listing)
    return folder


# -------------------------------------------------------------------------------------------- publish
def publish_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files :func:`publish` uploads (safetensors, JSON, the card) and the ones it leaves out."""
    kept, left = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # .cache, .git, editor files
        ok = path.suffix in (SAFETENSORS, ".json") or rel.as_posix() == CARD_NAME
        (kept if ok else left).append(path)
    return kept, left


def card_metadata(folder: Path) -> dict[str, Any]:
    """The model card's YAML metadata, validated for the Hub.

    Raises:
        FileNotFoundError: no ``README.md``.
        ValueError: no front matter, or a required key missing or wrong (names them).
    """
    import yaml

    card = folder / CARD_NAME
    if not card.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD_NAME} (the model card)")
    text = card.read_text()
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        raise ValueError(f"{card} has no YAML front matter between '---' lines")
    try:
        meta = yaml.safe_load(text[4:text.index("\n---", 4)])
    except yaml.YAMLError as error:
        raise ValueError(f"{card}: the front matter is not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{card}: the front matter is not a mapping")
    problems = [f"{key} is missing" for key in CARD_KEYS if not meta.get(key)]
    if meta.get("library_name") not in (None, "perchead"):
        problems.append(f"library_name is {meta['library_name']!r}, not 'perchead'")
    if meta.get("pipeline_tag") and meta["pipeline_tag"] not in PIPELINE_TAGS:
        problems.append(f"pipeline_tag {meta['pipeline_tag']!r} is not one of {PIPELINE_TAGS}")
    if meta.get("tags") and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
        problems.append("tags must be a list of strings")
    if problems:
        raise ValueError(f"{card}: " + "; ".join(problems))
    return meta


def publish(folder: str | os.PathLike, repo_id: str, revision: str | None = None, private: bool = False,
            dry_run: bool = False, token: str | None = None, out=sys.stdout) -> str | None:
    """Uploads a checkpoint folder and its card to a Hub model repo in one commit.

    Args:
        folder: the checkpoint root (e.g. ``weights_card``); its index names the parts, all are checked.
        repo_id: ``org/name``; created if needed.
        revision: branch to commit to (created from ``main`` if needed); default ``main``.
        private: create the repo private.
        dry_run: print the files with sizes and the card metadata, upload nothing.
        token: Hub token (default: the saved one / ``HF_TOKEN``).
        out: where the report goes.

    Returns:
        the commit id (None for a dry run).

    Raises:
        FileNotFoundError, ValueError: the folder is not a sound checkpoint or its card metadata is invalid.
    """
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    validate_repo_id(repo_id)
    index = read_index(folder, f"folder {str(folder)!r}")
    if index is None:
        raise FileNotFoundError(f"{folder} has no {INDEX_NAME}; write it with "
                                f"`python -m perchead.models.hub index {folder}`")
    check_parts(folder, list(index), f"folder {str(folder)!r}")
    meta = card_metadata(folder)
    kept, left = publish_files(folder)
    total = sum(p.stat().st_size for p in kept)
    print(f"{'would upload' if dry_run else 'uploading'} {len(kept)} files ({total / 1e6:.1f} MB) from {folder} "
          f"to {repo_id} ({revision or 'main'}{', private' if private else ''}):", file=out)
    for path in kept:
        print(f"  {path.stat().st_size:>12,d}  {path.relative_to(folder).as_posix()}", file=out)
    for path in left:
        print(f"  left out (not safetensors/JSON/card): {path.relative_to(folder).as_posix()}", file=out)
    print(f"parts: {', '.join(index)}", file=out)
    print("card metadata: " + json.dumps(meta, sort_keys=True), file=out)
    if dry_run:
        return None
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                             allow_patterns=[p.relative_to(folder).as_posix() for p in kept],
                             commit_message=f"Upload perchead checkpoint ({', '.join(index)})")
    print(f"committed {info.oid} to {repo_id}@{revision or 'main'}", file=out)
    return info.oid


def main(argv: list[str] | None = None) -> int:
    """``publish REPO_ID [--revision R] [--private] [--dry-run] [--folder F]`` or ``index FOLDER``."""
    parser = argparse.ArgumentParser(prog="python -m perchead.models.hub", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="upload a checkpoint folder and its card to a Hub model repo")
    pub.add_argument("repo_id")
    pub.add_argument("--revision", default=None, help="branch (default: main)")
    pub.add_argument("--private", action="store_true")
    pub.add_argument("--dry-run", action="store_true", help="print the files and card metadata, upload nothing")
    pub.add_argument("--folder", default="weights_card")
    idx = sub.add_parser("index", help=f"write {INDEX_NAME} naming the parts a folder holds")
    idx.add_argument("folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "index":
            print(write_index(args.folder))
        else:
            publish(args.folder, args.repo_id, args.revision, args.private, args.dry_run)
    except Exception as error:  # noqa: BLE001 - a command line: one line, not a traceback
        line = " ".join(str(error).split())[:400] or type(error).__name__  # the Hub's errors span lines
        print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
