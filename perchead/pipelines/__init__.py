"""Pipelines: a photo, a map, a clip or tensors in, a typed result out. Their stages live beside them: the photo's
way to a model input in :mod:`perchead.photo`, the photo-fit in :mod:`perchead.fit`, the files, views and
turntable in :mod:`perchead.export`.

- :class:`PercHeadPipeline` (``reconstruct``): portrait → :class:`Reconstruction` (3D Gaussians).
- :class:`PercHeadEditPipeline` (``edit``): photo → segmentation map; map + style → :class:`Edit`.
- :class:`~perchead.pipelines.sequence.SequencePipeline` (``sequence``): video → one head per frame.
- :func:`write_outputs` (from :mod:`perchead.export`, re-exported here): one head → .ply / .splat / .glb,
  novel views, turntable.
"""

from perchead.export.outputs import Outputs, write_outputs
from perchead.pipelines.edit import Edit, PercHeadEditPipeline
from perchead.pipelines.reconstruct import PercHeadPipeline, Reconstruction

__all__ = ["Edit", "Outputs", "PercHeadEditPipeline", "PercHeadPipeline", "Reconstruction", "write_outputs"]
