"""Pipelines: a photo, a map or tensors in, a typed result out; one writer from a head to files.

- :class:`PercHeadPipeline` (``reconstruct``): portrait → :class:`Reconstruction` (3D Gaussians).
- :class:`PercHeadEditPipeline` (``edit``): photo → segmentation map; map + style → :class:`Edit`.
- :func:`write_outputs` (``outputs``): one head → .ply / .splat / .glb, novel views, turntable (``video``).
- ``faces``: face detection, landmarks, head pose and matting for the photo preprocessing.
"""

from perchead.pipelines.edit import Edit, PercHeadEditPipeline
from perchead.export.outputs import Outputs, write_outputs
from perchead.pipelines.reconstruct import PercHeadPipeline, Reconstruction

__all__ = ["Edit", "Outputs", "PercHeadEditPipeline", "PercHeadPipeline", "Reconstruction", "write_outputs"]
