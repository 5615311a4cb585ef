"""Data: synthetic multi-view heads, the on-disk multi-view format, image folders and mixing (paper §3.4).

Every dataset yields the same sample dict: ``image [3,H,W]``, ``mask [1,H,W]``,
``input_viewmat [4,4]``, ``input_K [3,3]``, ``target_images [V,3,H,W]``, ``target_masks [V,1,H,W]``,
``target_viewmats [V,4,4]``, ``target_Ks [V,3,3]``, ``target_labels [V,H,W]`` (long, -1 = unknown),
``labels [H,W]`` (the input view's class ids, long, -1 = unknown; the editing model's input, §3.5),
``caption`` and ``subject`` strings. Images are over white.
"""

from perchead.data.imagefolder import ImageFolderDataset
from perchead.data.mixing import MixedDataset, weighted_sampler
from perchead.data.multiview import MultiViewDataset, export_synthetic
from perchead.data.synthetic import CLASS_NAMES, SPLITS, SyntheticHead, SyntheticHeads, make_head, render_head

__all__ = [
    "CLASS_NAMES", "SPLITS", "ImageFolderDataset", "MixedDataset", "MultiViewDataset", "SyntheticHead",
    "SyntheticHeads", "export_synthetic", "make_head", "render_head", "weighted_sampler",
]
