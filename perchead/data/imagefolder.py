"""Single-view image folders (FFHQ-style) as training samples, and the image I/O shared by the loaders.

The paper mixes real single-view portraits (FFHQ) into training for visual diversity (§3.4): for such an
image the input view is the only supervision. Those photos are unposed, so every image gets the
*canonical front camera* — the model's input framing, an orbit camera at azimuth 0, elevation 0,
radius 0.7 m, 30° field of view — i.e. we assume the portrait was cropped and aligned to that framing
(as FFHQ's alignment roughly does; run :mod:`perchead.photo.preprocess` on raw photos first).

Folder layout::

    ROOT/
      0001.png | .jpg | .jpeg | .webp    RGB or RGBA (alpha = foreground mask; composited over white)
      masks/0001.png                      optional grey mask (255 = foreground) for RGB images
      0001.txt                            optional caption

Without alpha or a mask file the mask is all ones and the image is used as it is.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from perchead.geometry.cameras import orbit_cameras
from perchead.geometry.images import over_white

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image(path: str, what: str = "image") -> Image.Image:
    """Opens and decodes an image file.

    Args:
        path: the file.
        what: what the file is, for the error message ("image", "mask", "label map").

    Raises:
        ValueError: if the file is missing or unreadable.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what} {path!r} cannot be read: {e}") from None
    return img


def load_rgb_mask(image_path: str, mask_path: str | None = None, composite: bool = True) -> tuple[Tensor, Tensor]:
    """Loads an image and its foreground mask, over a white background.

    Args:
        image_path: RGB or RGBA image. RGBA alpha is the mask and the colour is composited over white.
        mask_path: optional grey mask for RGB images (255 = foreground).
        composite: for RGB + mask, composite ``rgb · m + (1 − m)`` (False when RGB is already over white).

    Returns:
        (image ``[3, H, W]`` in [0, 1], mask ``[1, H, W]`` in [0, 1]).

    Raises:
        ValueError: if a file is missing or unreadable, or the mask size differs from the image's.
    """
    img = read_image(image_path)
    has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        arr = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0  # [H, W, 4]
        rgb, mask = over_white(arr[..., :3], arr[..., 3:]), arr[..., 3:]
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
        if mask_path is not None:
            mask = np.asarray(read_image(mask_path, "mask").convert("L"), dtype=np.float32)[..., None]  # [H, W, 1]
            mask = mask / 255.0
            if mask.shape[:2] != rgb.shape[:2]:
                raise ValueError(f"mask {mask_path!r} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")
            if composite:
                rgb = over_white(rgb, mask)
        else:
            mask = np.ones(rgb.shape[:2] + (1,), dtype=np.float32)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # [3, H, W]
    return image, torch.from_numpy(np.ascontiguousarray(mask)).permute(2, 0, 1)  # [1, H, W]


def square_resize_camera(image: Tensor, mask: Tensor, labels: Tensor | None, K: Tensor, size: int
                         ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Centre-crops to a square and resizes to ``size``, updating the intrinsics to match.

    Args:
        image: ``[3, H, W]``; mask: ``[1, H, W]``; labels: ``[H, W]`` long or None; K: ``[3, 3]`` pixels.
        size: output side.

    Returns:
        (image ``[3, S, S]``, mask ``[1, S, S]``, labels ``[S, S]`` or None, K ``[3, 3]``).
    """
    H, W = image.shape[-2:]
    side = min(H, W)
    oy, ox = (H - side) // 2, (W - side) // 2
    image, mask = image[:, oy:oy + side, ox:ox + side], mask[:, oy:oy + side, ox:ox + side]
    labels = None if labels is None else labels[oy:oy + side, ox:ox + side]
    K = K.clone().float()
    K[0, 2] -= ox
    K[1, 2] -= oy
    if side != size:
        scale = size / side
        K[:2] *= scale  # continuous pixel coordinates (centres at +0.5) scale exactly
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0].clamp(0, 1)
        mask = F.interpolate(mask[None], size=(size, size), mode="bilinear", align_corners=False,
                             antialias=scale < 1)[0].clamp(0, 1)
        if labels is not None:
            labels = F.interpolate(labels[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return image.contiguous(), mask.contiguous(), labels, K


class ImageFolderDataset(torch.utils.data.Dataset):
    """Single-view portraits as training samples: the input view is the only target.

    Args:
        root: folder of images (layout in the module docstring).
        image_size: square side after centre crop and resize.
        n_targets: how many times the input view is repeated as target, so that batches mix with
            multi-view samples of the same ``n_targets`` under the default collate (a repeated target
            carries the same loss as one).
        radius, fov_deg: the canonical front camera assumed for every image.

    Raises:
        ValueError: if ``root`` is missing or holds no image.
    """

    def __init__(self, root: str, image_size: int = 128, n_targets: int = 1, radius: float = 0.7, fov_deg: float = 30.0):
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist or is not a folder")
        if n_targets < 1:
            raise ValueError(f"n_targets must be at least 1, got {n_targets}")
        self.root, self.image_size, self.n_targets = root, image_size, n_targets
        self.files = sorted(f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS)
                            and os.path.isfile(os.path.join(root, f)))
        if not self.files:
            raise ValueError(f"image folder {root!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        cam = orbit_cameras([0.0], [0.0], radius=radius, fov_deg=fov_deg, size=image_size)
        self.viewmat, self.K = cam.viewmats[0], cam.Ks[0]  # [4, 4], [3, 3]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        name = self.files[index]
        stem = os.path.splitext(name)[0]
        mask_file = os.path.join(self.root, "masks", stem + ".png")
        image, mask = load_rgb_mask(os.path.join(self.root, name), mask_file if os.path.isfile(mask_file) else None)
        # the image is assumed to show the canonical framing: crop/resize with a dummy K, keep the canonical K
        image, mask, _, _ = square_resize_camera(image, mask, None, torch.eye(3), self.image_size)
        caption_file = os.path.join(self.root, stem + ".txt")
        caption = open(caption_file).read().strip() if os.path.isfile(caption_file) else ""
        V, S = self.n_targets, self.image_size
        return {
            "image": image, "mask": mask,  # [3, S, S], [1, S, S]
            "labels": torch.full((S, S), -1, dtype=torch.long),  # [S, S] unknown (no label maps here)
            "input_viewmat": self.viewmat.clone(), "input_K": self.K.clone(),
            "target_images": image[None].expand(V, -1, -1, -1).clone(),  # [V, 3, S, S]
            "target_masks": mask[None].expand(V, -1, -1, -1).clone(),  # [V, 1, S, S]
            "target_viewmats": self.viewmat[None].expand(V, -1, -1).clone(),  # [V, 4, 4]
            "target_Ks": self.K[None].expand(V, -1, -1).clone(),  # [V, 3, 3]
            "target_labels": torch.full((V, S, S), -1, dtype=torch.long),  # [V, S, S] unknown
            "caption": caption, "subject": stem,
        }
