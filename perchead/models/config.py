"""Configuration of the PercHead model (paper §3.1–3.3, supplement §7): one dataclass per component.

Every field's comment says what it is and where its value comes from: ``paper`` (stated in the PercHead
paper, or DINOv2's published architecture) or ``ours`` (the paper does not give it; chosen here).
Presets (:meth:`PercHeadConfig.preset`): ``paper`` — DINOv2-giant (layers 9, 19, 29, 39) ∥ task ViT,
65,536 Gaussians in 4,096 patches, CNN refiner, what a GPU cluster would train; ``demo`` — the task ViT
alone (no machine here can download DINOv2), 16,384 Gaussians, 128×128 input, trainable on a 2-core CPU
in hours; ``tiny`` — a tiny random DINOv2 built in code, for tests. ``to_dict`` / ``from_dict``
round-trip through a checkpoint's ``config.json``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PATCH_GAUSSIANS = 16  # Gaussians (template vertices) per 3D patch — paper §3.2/§3.3

# DINOv2-giant's published architecture (facebook/dinov2-giant config.json), so that the paper model can be
# built with random weights offline (benchmarks) and its weights loaded by id where a network exists.
DINOV2_GIANT = {  # paper (DINOv2's architecture)
    "hidden_size": 1536,
    "num_hidden_layers": 40,
    "num_attention_heads": 24,
    "mlp_ratio": 4,
    "use_swiglu_ffn": True,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}


# --------------------------------------------------------------------------------------------- sub-configs
@dataclass
class TemplateConfig:
    """The canonical head template the decoder starts from (§3.2)."""

    n_gaussians: int = 65536  # paper: template upsampled to 65k vertices = Gaussians
    n_patches: int = 4096  # paper: 4,096 3D patches of 16 vertices
    flame_path: str | None = None  # ours: optional FLAME model file (user-supplied, never shipped)

    def __post_init__(self) -> None:
        if self.n_patches <= 0 or self.n_gaussians != PATCH_GAUSSIANS * self.n_patches:
            raise ValueError(
                f"n_gaussians must equal {PATCH_GAUSSIANS} × n_patches, got {self.n_gaussians} and {self.n_patches}"
            )


@dataclass
class DinoConfig:
    """The frozen DINOv2 branch of the lift encoder (§3.1)."""

    model_id: str | None = "facebook/dinov2-giant"  # paper: DINOv2-giant, loaded by id (weights never copied)
    revision: str | None = None  # ours: Hub revision of model_id (None = main)
    layers: tuple[int, ...] = (9, 19, 29, 39)  # paper: 0-based block indices whose outputs are used
    architecture: dict[str, Any] = field(default_factory=lambda: dict(DINOV2_GIANT))  # paper: Dinov2Config kwargs
    pretrained: bool = True  # ours: True = Dinov2Model.from_pretrained(model_id); False = random weights from
    #                          `architecture` (tests, benchmarks); such weights are then stored in our checkpoint

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        depth = int(self.architecture.get("num_hidden_layers", 12))
        if not self.layers or min(self.layers) < 0 or max(self.layers) >= depth:
            raise ValueError(f"dino layers must lie in [0, {depth - 1}], got {self.layers}")
        if self.pretrained and not self.model_id:
            raise ValueError("dino.pretrained=True needs a model_id to load the weights from")

    @property
    def patch_size(self) -> int:
        return int(self.architecture.get("patch_size", 14))

    @property
    def hidden_size(self) -> int:
        return int(self.architecture.get("hidden_size", 768))


@dataclass
class EncoderConfig:
    """The dual-branch lift encoder: task ViT ∥ frozen DINOv2, fused by an MLP (§3.1, eq. 1)."""

    patch_size: int = 14  # paper: task ViT patch size matches DINOv2's (14)
    width: int = 384  # ours: task ViT width ("lightweight", ViT-S sized)
    depth: int = 6  # ours: task ViT blocks
    heads: int = 6  # ours: task ViT attention heads
    mlp_ratio: float = 4.0  # ours: ViT default
    fg_threshold: float = 0.5  # ours: a patch is foreground if any mask pixel in it exceeds this
    dino: DinoConfig | None = field(default_factory=DinoConfig)  # paper: DINOv2 branch; None = task ViT alone

    def __post_init__(self) -> None:
        if isinstance(self.dino, dict):
            self.dino = DinoConfig(**self.dino)
        if self.width % self.heads:
            raise ValueError(f"encoder width {self.width} is not divisible by heads {self.heads}")
        if self.dino is not None and self.dino.patch_size != self.patch_size:
            raise ValueError(
                f"task ViT patch size {self.patch_size} must match DINOv2's {self.dino.patch_size} (§3.1)"
            )


@dataclass
class DecoderConfig:
    """The 3D ViT decoder: template-patch tokens cross-attending to 2D tokens, no self-attention (§3.2)."""

    width: int = 512  # ours: MAE decoder default width
    depth: int = 8  # ours: MAE decoder default depth
    heads: int = 16  # ours: MAE decoder default heads
    mlp_ratio: float = 4.0  # ours: ViT default
    n_freqs: int = 6  # ours: Fourier frequencies of the patch positional encoding
    coord_scale: float = 0.2  # ours: metres mapped to 1 before the Fourier features (head ≈ 0.2 m)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"decoder width {self.width} is not divisible by heads {self.heads}")


@dataclass
class HeadConfig:
    """The Gaussian head: PixelShuffle ×16 then independent linear layers per attribute (§3.3)."""

    hidden: int = 64  # ours: channels per Gaussian after the ×16 PixelShuffle expansion
    max_offset: float = 0.15  # ours: |offset| ≤ max_offset (m) per axis, via tanh, from the template vertex
    min_scale: float = 2e-4  # ours: lower bound of the Gaussian standard deviations (m)
    max_scale: float = 0.03  # ours: upper bound (m)
    init_scale: float = 1.0  # ours: initial std as a multiple of the template's mean vertex spacing
    init_opacity: float = 0.9  # ours: initial opacity (a closed, solid surface before training)
    init_color: float = 0.5  # ours: initial grey level

    def __post_init__(self) -> None:
        if not 0 < self.min_scale < self.max_scale:
            raise ValueError(f"need 0 < min_scale < max_scale, got {self.min_scale}, {self.max_scale}")
        if not 0 < self.init_opacity < 1 or not 0 < self.init_color < 1:
            raise ValueError("init_opacity and init_color must lie in (0, 1)")


@dataclass
class RefinerConfig:
    """The shallow CNN applied to rendered images (§3.3)."""

    enabled: bool = True  # paper: a CNN sharpens renders and removes artefacts
    channels: int = 64  # ours
    blocks: int = 3  # ours: residual blocks ("shallow")


@dataclass
class RenderConfig:
    """Image sizes and the framing of the model's input views (matches perchead.geometry.cameras.orbit_cameras)."""

    image_size: int = 518  # ours: input resolution (37 × 14-pixel patches, DINOv2's native 518)
    render_size: int = 512  # ours: default size of rendered views
    fov_deg: float = 30.0  # ours: horizontal field of view of input views and default renders
    radius: float = 0.7  # ours: camera distance (m) from the head centre
    backend: str = "auto"  # ours: perchead.render backend ("auto" = gsplat on CUDA, PyTorch elsewhere)


# --------------------------------------------------------------------------------------------- the whole
@dataclass
class PercHeadConfig:
    """All settings that build a :class:`perchead.models.perchead.PercHead`; stored as a checkpoint's config.json."""

    template: TemplateConfig = field(default_factory=TemplateConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    name: str = "paper"  # the preset this config started from (informative only)

    def __post_init__(self) -> None:
        if self.render.image_size % self.encoder.patch_size:
            raise ValueError(
                f"image_size {self.render.image_size} is not a multiple of the patch size {self.encoder.patch_size}"
            )

    # ------------------------------------------------------------------ presets
    @staticmethod
    def preset(name: str) -> "PercHeadConfig":
        """Returns a fresh copy of a named preset: ``"paper"``, ``"demo"`` or ``"tiny"``."""
        return model_preset("perchead", name)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PercHeadConfig":
        """Builds a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        data = copy.deepcopy(dict(data))
        sub = {
            "template": TemplateConfig,
            "encoder": EncoderConfig,
            "decoder": DecoderConfig,
            "head": HeadConfig,
            "refiner": RefinerConfig,
            "render": RenderConfig,
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sub:
                _check_keys(sub[key], value, key)
                if key == "encoder" and value.get("dino") is not None:
                    _check_keys(DinoConfig, value["dino"], "encoder.dino")
                    value["dino"] = DinoConfig(**value["dino"])
                kwargs[key] = sub[key](**value)
            elif key == "name":
                kwargs[key] = value
            else:
                raise ValueError(f"unknown PercHeadConfig key {key!r}")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PercHeadConfig":
        return cls.from_dict(json.loads(text))


def _check_keys(cls, value: dict, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(value) - known
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}")


# --------------------------------------------------------------------------------------------- presets
def _paper() -> PercHeadConfig:
    return PercHeadConfig(name="paper")  # every default above is the paper preset


def _demo() -> PercHeadConfig:
    return PercHeadConfig(
        name="demo",
        template=TemplateConfig(n_gaussians=16384, n_patches=1024),  # ours: 4× fewer than the paper, for CPU
        encoder=EncoderConfig(patch_size=8, width=128, depth=4, heads=4, mlp_ratio=2.0, dino=None),  # ours
        decoder=DecoderConfig(width=128, depth=4, heads=4, mlp_ratio=2.0, n_freqs=6),  # ours
        head=HeadConfig(hidden=32, max_scale=0.04),  # ours
        refiner=RefinerConfig(enabled=True, channels=16, blocks=2),  # ours
        render=RenderConfig(image_size=128, render_size=128),  # ours: 16 × 16 patches of 8 pixels
    )


def _tiny() -> PercHeadConfig:
    tiny_dino = {  # ours: a tiny random DINOv2 so tests exercise the dual-branch path in seconds
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "use_swiglu_ffn": False,
        "patch_size": 8,
        "image_size": 64,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    }
    return PercHeadConfig(
        name="tiny",
        template=TemplateConfig(n_gaussians=2048, n_patches=128),
        encoder=EncoderConfig(
            patch_size=8, width=32, depth=2, heads=2, mlp_ratio=2.0,
            dino=DinoConfig(model_id=None, layers=(1, 3), architecture=tiny_dino, pretrained=False),
        ),
        decoder=DecoderConfig(width=32, depth=3, heads=2, mlp_ratio=2.0, n_freqs=4),
        head=HeadConfig(hidden=8, max_scale=0.05),
        refiner=RefinerConfig(enabled=True, channels=8, blocks=1),
        render=RenderConfig(image_size=64, render_size=64),
    )


# Every architecture preset of the package, in one table: model → preset name → its values (all ours, except
# where a PercHeadConfig field says paper). The training presets are perchead.training.config.TRAIN_PRESETS.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "perchead": {"paper": _paper, "demo": _demo, "tiny": _tiny},  # PercHeadConfig builders
    # StyleConfig fields: demo is the bundled style CLIP (4.2 M parameters, 8.4 MB in float16)
    "style": {
        "demo": {},
        "tiny": dict(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_head_width=16,
                     context_length=32, text_width=16, text_heads=1, text_layers=1),
    },
    # SegformerConfig fields: MiT-b0 is hidden (32, 64, 160, 256), depths (2, 2, 2, 2), decoder 256; demo is
    # about 1/4 of it (0.9 M parameters, CPU-trainable in minutes)
    "parser": {
        "demo": dict(hidden_sizes=[16, 32, 80, 128], depths=[1, 2, 2, 1], num_attention_heads=[1, 1, 2, 4],
                     decoder_hidden_size=128),
        "tiny": dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                     decoder_hidden_size=32),
    },
}


def model_preset(model: str, name: str) -> Any:
    """The values of preset ``name`` of ``model`` ("perchead", "style" or "parser") from :data:`MODEL_PRESETS`.

    Raises:
        ValueError: for an unknown model or preset.
    """
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODEL_PRESETS)}")
    presets = MODEL_PRESETS[model]
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for the {model} model; choose one of {sorted(presets)}")
    value = presets[name]
    return value() if callable(value) else copy.deepcopy(value)
