"""PercHead: single-image 3D head reconstruction and semantic 3D editing with Gaussian splats.

Light imports only; heavy stages live in their own modules (docs/architecture.md lists the folders).

Importing perchead before torch sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set): idle OpenMP
threads then sleep instead of spinning, which keeps the CPU renderer's kernel and torch's own parallel
regions from starving each other on small machines (4–7× less CPU time measured on 2 busy cores).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from perchead.geometry.cameras import Cameras, look_at, orbit_cameras
from perchead.geometry.gaussians import Gaussians

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "look_at", "orbit_cameras", "__version__"]
