"""Editing pipeline: photo → segmentation map, and map + style → 3D head (paper §3.5, supplement §8).

:class:`PercHeadEditPipeline` holds the editing model (:class:`~perchead.models.editor.PercHeadEditor`), the
CLIP style encoder and the face parser. :meth:`~PercHeadEditPipeline.segment` parses a photo (cropped like
a reconstruction input) into the 19-class map; ``__call__`` lifts a map (class ids or a palette-coloured
image) to Gaussians with a style token from a text prompt (zero-shot) or a reference image.

Example::

    pipe = PercHeadEditPipeline.from_pretrained("weights_card")   # reads weights_card/{edit,style,parser}
    labels = pipe.segment("examples/head0_front.png")             # [S, S] long
    labels[:20][labels[:20] == 0] = 13                            # paint hair on top
    edit = pipe(labels, style_text="blonde")
    edit.gaussians[0], edit.timings                               # always batched, like Reconstruction

The probes of the disentanglement measures (same map + another style keeps the geometry; a hair-colour prompt
moves the hair) are :func:`perchead.evaluation.editing.render_and_parse` and
:func:`perchead.evaluation.metrics.label_iou` / :func:`~perchead.evaluation.metrics.class_mean_color`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.segmentation import BACKGROUND, NUM_CLASSES, resize_labels
from perchead.models.base import WEIGHTS_NAME
from perchead.models.editor import PercHeadEditor
from perchead.photo.config import PreprocessConfig
from perchead.photo.load import ImageSource
from perchead.photo.preprocess import Preprocessed, preprocess
from perchead.pipelines.common import StageTimer, default_device, gaussians_and_views, inference_autocast
from perchead.progress import Progress, no_progress

if TYPE_CHECKING:
    from perchead.models.face_parser import FaceParser
    from perchead.models.style_encoder import StyleEncoder
    from perchead.render import RenderOutput

# Sub-folders of an editing checkpoint folder (the bundled layout is weights_card/{edit,style,parser}):
# name → the config file that must exist beside the weights.
PARTS: dict[str, str] = {"edit": "config.json", "style": "open_clip_config.json", "parser": "config.json"}
RECIPE = Path(__file__).resolve().parents[1] / "weights_recipe.json"  # how every bundled checkpoint is trained
MAX_MAP_SIDE = 1024  # painted maps above this side are downscaled (nearest) before colour → labels (speed)
MIN_MAP_SIDE = 64  # smaller maps cannot show eyes, brows and lips; they are refused
MAP_SOURCES = ("auto", "landmarks", "parser")  # where PercHeadEditPipeline.segment takes a photo's map from
MAX_PROMPT_CHARS = 300  # longer style prompts are refused (CLIP reads a few dozen tokens anyway)


@dataclass
class Edit:
    """What :class:`PercHeadEditPipeline` returns; always batched (B = 1), like
    :class:`~perchead.pipelines.reconstruct.Reconstruction`.

    Attributes:
        gaussians: the edited head. ``[1, N, …]``
        labels: the label map the model saw. ``[1, S, S]`` long
        style: the style embedding used. ``[1, E]`` (l2-normalised)
        style_source: ``"text"`` or ``"image"``.
        views: renders of the given cameras (``rgb [1, V, 3, H, W]`` …), or None.
        style_input: the cropped style reference image (``Preprocessed``) for image styles, else None.
        timings: seconds per stage: ``labels``, ``style_preprocess`` (image style only), ``style``,
            ``encode``, ``decode``, ``gaussians``, ``render`` (with cameras) and ``total``.
        notes: remarks for the user (an enlarged map, a prompt longer than the style encoder reads, the
            style image's preprocessing).
    """

    gaussians: Gaussians
    labels: Tensor
    style: Tensor
    style_source: str
    views: RenderOutput | None = None
    style_input: Preprocessed | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def missing_parts(folder: str | os.PathLike) -> dict[str, str]:
    """Which parts of an editing checkpoint folder are absent (cheap: only looks at files).

    Args:
        folder: a folder expected to hold ``edit/``, ``style/`` and ``parser/``.

    Returns:
        part name → a message naming the missing folder and the command that trains it (empty if complete).
    """
    root = Path(folder)
    missing = {}
    for name, config_name in PARTS.items():
        part = root / name
        if not (part / config_name).is_file() or not (part / WEIGHTS_NAME).is_file():
            missing[name] = f"{part} (needs {config_name} + {WEIGHTS_NAME}; train it with `{train_command(name)}`)"
    return missing


def train_command(part: str) -> str:
    """The command of the bundled recipe that trains one part (``edit``, ``style``, ``parser``)."""
    stages = json.loads(RECIPE.read_text())["stages"]
    return "python " + " ".join(next(stage["args"] for stage in stages if stage.get("card") == part))


class PercHeadEditPipeline:
    """Photo → label map (:meth:`segment`); label map + text or image style → Gaussians (:meth:`__call__`).

    Args:
        editor: the editing model.
        style_encoder: the CLIP style encoder; its ``embed_dim`` must equal ``editor.edit_config.style_dim``.
        parser: the face parser.
        device: where to run (default: CUDA if available, else CPU).
    """

    def __init__(self, editor: PercHeadEditor, style_encoder: StyleEncoder, parser: FaceParser,
                 device: str | torch.device | None = None):
        if style_encoder.embed_dim != editor.edit_config.style_dim:
            raise ValueError(f"the style encoder embeds into {style_encoder.embed_dim} dimensions but the editing "
                             f"model expects {editor.edit_config.style_dim} (edit_config.style_dim): they were not "
                             "trained together")
        self.device = torch.device(device) if device is not None else default_device()
        self.editor = editor.to(self.device).eval()
        self.style_encoder = style_encoder.to(self.device).freeze()
        self.parser = parser
        parser.model.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: str | os.PathLike, device: str | torch.device | None = None, *,
                        revision: str | None = None, token: str | bool | None = None,
                        cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False) -> "PercHeadEditPipeline":
        """Loads ``edit/`` (editor), ``style/`` (style encoder) and ``parser/`` (face parser) of a checkpoint root.

        Args:
            repo_id_or_folder: a folder such as ``weights_card`` (the layout ``{edit,style,parser}/``), or a
                Hub model repo id holding the same layout (one ``snapshot_download`` of the parts' JSON and
                safetensors files, cached, offline under ``HF_HUB_OFFLINE=1``). The same repo can hold the base
                model at its top.
            device: where to run.
            revision: Hub branch, tag or commit (ignored for folders).
            token: Hub token (default: the saved one / ``HF_TOKEN``).
            cache_dir: Hub cache (default: huggingface_hub's).
            local_files_only: never ask the Hub.

        Raises:
            FileNotFoundError: a part or file is missing (a local folder's message names the command that
                trains it), or the repo, revision or cache entry is.
            ValueError: pickle-only or corrupt weights; the parts do not fit together (style embedding size).
        """
        from perchead.models.face_parser import FaceParser
        from perchead.models.hub import EDIT_PARTS, fetch_parts
        from perchead.models.style_encoder import StyleEncoder

        if Path(repo_id_or_folder).is_dir():
            missing = missing_parts(repo_id_or_folder)
            if missing:
                raise FileNotFoundError(f"editing checkpoint {str(repo_id_or_folder)!r} is incomplete: missing "
                                        + "; ".join(missing.values()))
        root = fetch_parts(repo_id_or_folder, EDIT_PARTS, revision, token=token, cache_dir=cache_dir,
                           local_files_only=local_files_only)
        device = torch.device(device) if device is not None else default_device()
        editor = PercHeadEditor.from_pretrained(root / "edit")
        style_encoder = StyleEncoder.from_pretrained(str(root / "style"), device=device)
        parser = FaceParser.from_pretrained(str(root / "parser"), device=device)
        return cls(editor, style_encoder, parser, device=device)

    @property
    def image_size(self) -> int:
        """Side S of the label maps the editing model takes."""
        return self.editor.config.render.image_size

    def preprocess_config(self, **overrides) -> PreprocessConfig:
        """The photo crop of the reconstruction path with this model's framing (size, radius, fov)."""
        return PreprocessConfig.from_model_config(self.editor.config.render, **overrides)

    # ------------------------------------------------------------------------------------------ parsing
    @torch.no_grad()
    def segment(self, photo: ImageSource, remove_background: bool = True, auto_crop: bool = True,
                use_whole_image: bool = False, return_preprocessed: bool = False, source: str = "auto"):
        """Turns a photo into the 19-class map the editing model takes.

        Steps: 1. crop + mask exactly as for reconstruction; 2. the map: from the face landmarks and the
        matte (:meth:`Preprocessed.label_map`; eyes, brows, nose, lips and mouth from landmark polygons,
        hair, skin, neck and cloth from the matte and colours), or from the face parser; 3. pixels outside
        the mask become background. The parser was trained on synthetic renders only: on real photos it
        scrambles the parts, while the landmark map follows the face (on synthetic test renders the parser
        agrees better with the true map, mIoU 0.61 against 0.32).

        Args:
            photo: path, bytes, PIL image or uint8 array (see :func:`perchead.photo.preprocess.preprocess`).
            remove_background: mask the background (alpha, else the matting network or GrabCut) first.
            auto_crop: find the head and crop to the model's framing.
            use_whole_image: when no face is found, use the whole image instead of failing.
            return_preprocessed: also return the :class:`Preprocessed` crop (its ``notes`` say which map ran).
            source: ``"auto"`` (the landmark map when face landmarks were found, else the parser),
                ``"landmarks"`` (the same, with a note when it falls back) or ``"parser"``.

        Returns:
            labels ``[S, S]`` long in 0..18 (S = :attr:`image_size`), or (labels, preprocessed).

        Raises:
            ValueError: an unknown ``source``.
            perchead.photo.load.PreprocessError: an unusable photo (message says why).
        """
        if source not in MAP_SOURCES:
            raise ValueError(f"unknown map source {source!r}; choose one of {', '.join(MAP_SOURCES)}")
        prep = preprocess(photo, self.preprocess_config(remove_background=remove_background, auto_crop=auto_crop,
                                                        use_whole_image=use_whole_image))
        labels = self.map_of(prep, source)  # [S, S]
        return (labels, prep) if return_preprocessed else labels

    @torch.no_grad()
    def map_of(self, prep: Preprocessed, source: str = "auto") -> Tensor:
        """The class map of an already preprocessed photo (e.g. a reconstruction's crop), as :meth:`segment`
        makes it; a note on which map ran is added to ``prep.notes``.

        Returns:
            labels ``[S, S]`` long (background outside the mask).
        """
        if source not in MAP_SOURCES:
            raise ValueError(f"unknown map source {source!r}; choose one of {', '.join(MAP_SOURCES)}")
        labels = prep.label_map() if source != "parser" else None  # [S, S] or None
        if labels is not None:
            labels = torch.where(prep.mask[0, 0] >= 0.5, labels, torch.zeros_like(labels))
            prep.notes.append("map from the face landmarks and the matte")
        else:
            if source == "landmarks":
                prep.notes.append("no face landmarks were found: the map comes from the face parser "
                                  "(trained on synthetic heads only)")
            else:
                prep.notes.append("map from the face parser (trained on synthetic heads)")
            labels = self.parser.parse(prep.image[0], mask=prep.mask[0])  # [S, S]
        return labels.long().cpu()

    def labels_from_color(self, image: Any, snap: bool = False, max_side: int = MAX_MAP_SIDE,
                          return_notes: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """A painted / parsed colour map (palette colours) → the model's label map.

        Args:
            image: anything :func:`perchead.geometry.segmentation.color_to_labels` reads (PIL, array, tensor, a
                ``gr.ImageEditor`` value dict; for such a dict without ``composite`` the ``background`` is used).
            snap: map colours that are neither palette colours nor blends of neighbouring ones to the nearest
                palette colour instead of raising.
            max_side: larger maps are first downscaled with nearest neighbour (no new colours) to this side.
            return_notes: also return remarks for the user (e.g. that a small map was enlarged).

        Returns:
            long ``[S, S]`` class ids (nearest-neighbour resized to the model size), or (labels, notes).

        Raises:
            ValueError: no image, a map that is not square (within 2 %) or under :data:`MIN_MAP_SIDE`
                pixels, or foreign colours (without ``snap``).
        """
        from PIL import Image

        from perchead.geometry.segmentation import color_to_labels

        if isinstance(image, dict):
            image = image.get("composite") if image.get("composite") is not None else image.get("background")
        if image is None:
            raise ValueError("no segmentation map: parse a photo, pick an example map or paint one")
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as opened:
                image = opened.copy()
        if isinstance(image, Image.Image) and max(image.size) > max_side:
            scale = max_side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.NEAREST)
        labels = color_to_labels(image, snap=snap)  # [H, W]
        height, width = labels.shape
        S = self.image_size
        if abs(width - height) > 0.02 * max(width, height):
            raise ValueError(f"the map is {width}×{height} pixels but must be square (the model reads {S}×{S} "
                             "maps): crop or pad it to a square")
        if min(width, height) < MIN_MAP_SIDE:
            raise ValueError(f"the map is {width}×{height} pixels, too small to show the face parts: use at least "
                             f"{MIN_MAP_SIDE}×{MIN_MAP_SIDE} (the model reads {S}×{S})")
        notes = [f"the {width}×{height} map was enlarged to the model's {S}×{S}"] if min(width, height) < S else []
        labels = resize_labels(labels, S) if (height, width) != (S, S) else labels  # [S, S]
        return (labels, notes) if return_notes else labels

    def prompt_notes(self, text: str) -> list[str]:
        """Checks a style prompt's length; notes that the style encoder reads only its first tokens.

        Raises:
            ValueError: a prompt longer than :data:`MAX_PROMPT_CHARS` characters.
        """
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"the style prompt has {len(text)} characters; keep it under {MAX_PROMPT_CHARS} "
                             "(a few words describe a style best)")
        tokenizer = self.style_encoder.tokenizer
        context, encode = getattr(tokenizer, "context_length", None), getattr(tokenizer, "encode", None)
        if context is None or encode is None:
            return []
        tokens = encode(text)
        if len(tokens) + 2 <= context:  # + start and end tokens
            return []
        kept = tokenizer.decode(tokens[: context - 2]).strip() if hasattr(tokenizer, "decode") else ""
        return [f"the prompt is {len(tokens)} tokens long; the style encoder reads only the first {context - 2}"
                + (f" (“{kept}”)" if kept else "")]

    # ------------------------------------------------------------------------------------------ style
    def _style_image(self, image: Any) -> tuple[Tensor, Preprocessed | None]:
        """A style reference → ``[1, 3, H, W]`` in [0, 1]; photos and files are cropped like reconstruction inputs."""
        if isinstance(image, Tensor):  # already a model-framed image
            x = image[None] if image.dim() == 3 else image
            if x.dim() != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
                raise ValueError(f"a style image tensor must be float [3, H, W] or [1, 3, H, W] in [0, 1], "
                                 f"got {x.dtype} {tuple(image.shape)}")
            return x, None
        # a style reference needs no face (a hair swatch will do): without one the whole image is used, with a note
        prep = preprocess(image, self.preprocess_config(use_whole_image=True))
        return prep.image, prep  # [1, 3, S, S]

    @staticmethod
    def check_style(style_text: str | None, style_image: Any) -> str:
        """Which style input to use: ``"text"`` or ``"image"``; exactly one must be given.

        Raises:
            ValueError: both or neither (an empty or whitespace-only prompt counts as none).
        """
        has_text = style_text is not None and bool(str(style_text).strip())
        has_image = style_image is not None
        if has_text and has_image:
            raise ValueError("give either a style prompt or a style reference image, not both")
        if not has_text and not has_image:
            raise ValueError("no style: type a prompt (e.g. 'long blonde hair') or give a reference image")
        return "text" if has_text else "image"

    def labels_for_model(self, labels: Tensor) -> Tensor:
        """Checks a label map and resizes it (nearest) to the model size. ``[H, W]`` / ``[1, H, W]`` → ``[1, S, S]``.

        Raises:
            ValueError: not an integer ``[H, W]`` map, classes outside 0..18, or only background.
        """
        if not isinstance(labels, Tensor):
            labels = torch.as_tensor(labels)
        if labels.dim() == 3 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.dim() != 2 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer [H, W] class map, got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.long().cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got {int(labels.min())}..{int(labels.max())}")
        if not (labels != BACKGROUND).any():
            raise ValueError("the segmentation map is empty (all background): paint or parse a head first")
        S = self.image_size
        if tuple(labels.shape) != (S, S):
            labels = resize_labels(labels, S)  # [S, S]
        return labels[None].to(self.device)  # [1, S, S]

    # ------------------------------------------------------------------------------------------ edit
    @torch.no_grad()
    def __call__(self, labels: Any, style_text: str | None = None, style_image: Any = None, *,
                 snap: bool = False, cameras: Cameras | None = None, refine: bool = True,
                 progress: Progress = no_progress) -> Edit:
        """Lifts a segmentation map to a 3D head styled by a prompt or a reference image (§3.5).

        Args:
            labels: class ids ``[H, W]`` / ``[1, H, W]`` (an integer tensor or array, any size: resized to S
                with nearest neighbour), or a palette-coloured map (path, PIL image, uint8 array, or a
                ``gr.ImageEditor`` value; see :meth:`labels_from_color`).
            style_text: a prompt such as ``"long red hair"`` (CLIP text embedding, zero-shot as in the paper).
            style_image: a reference image (path, bytes, PIL, uint8 array: cropped like a portrait), or a
                float tensor ``[(1,) 3, H, W]`` already framed like the model's inputs.
            snap: for a coloured map, map foreign colours to the nearest palette colour instead of raising.
            cameras: views to render (e.g. ``pipe.editor.default_cameras([0, 90])``); None renders nothing.
            refine: apply the CNN refiner to the renders.
            progress: called with (fraction, stage) before each stage; may raise to stop the work.

        Returns:
            :class:`Edit`.

        Raises:
            ValueError: bad or empty maps, both or neither style input, a prompt that is too long.
            perchead.photo.load.PreprocessError: an unusable style image.
        """
        source = self.check_style(style_text, style_image)
        notes = self.prompt_notes(str(style_text).strip()) if source == "text" else []
        timer = StageTimer(self.device)
        # 1. label map to the model size (a coloured map is read first)
        progress(0.0, "reading the segmentation map")
        if not (isinstance(labels, Tensor) or (isinstance(labels, np.ndarray) and labels.ndim == 2)):
            labels, map_notes = self.labels_from_color(labels, snap=snap, return_notes=True)
            notes += map_notes
        model_labels = self.labels_for_model(labels)  # [1, S, S]
        timer("labels")
        # 2. style embedding: CLIP text (zero-shot) or image embedding of the cropped reference
        progress(0.05, "embedding the style")
        style_input = None
        if source == "text":
            style = self.style_encoder.encode_text([str(style_text).strip()])  # [1, E]
        else:
            image, style_input = self._style_image(style_image)  # [1, 3, H, W]
            notes += style_input.notes if style_input is not None else []
            timer("style_preprocess")
            style = self.style_encoder.encode_image(image.to(self.device))  # [1, E]
        timer("style")
        progress(0.1, "building the 3D head from the map and the style")
        with inference_autocast(self.device):
            # 3. edit encoder: non-background patches + the style token
            tokens2d = self.editor.encode(model_labels, style)
            timer("encode")
            # 4. the base model's 3D decoder
            tokens3d = self.editor.decode(tokens2d)
            color_bias = self.editor.color_bias(tokens2d, tokens3d)  # [1, P, 3] or None
            timer("decode")
        # 5.–6. Gaussian head (float32), optional renders + refiner
        gaussians, views = gaussians_and_views(self.editor, tokens3d, cameras, refine, timer, color_bias)
        return Edit(gaussians=gaussians, labels=model_labels.cpu(), style=style.float().cpu(), style_source=source,
                    views=views, style_input=style_input, timings=timer.total(), notes=notes)


