"""PercHead: single-image 3D head reconstruction and semantic 3D editing with Gaussian splats.

Light imports only; heavy stages live in their own modules (see README's layout table).
"""

from perchead.cameras import Cameras, look_at, orbit_cameras
from perchead.gaussians import Gaussians

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "look_at", "orbit_cameras", "__version__"]
