"""The photo-fit: after the feed-forward head, the network and then the Gaussians are fitted to the photo.

The stages, in the order :func:`~perchead.fit.driver.fit_to_photo` runs them: the input camera (``pose``), the
latent stage (``latent``), the face shape (``face_shape``), then the Gaussian stage (``gaussians``) with the
head transform (``head_transform``) and its priors (``priors``); ``config`` holds :class:`FitConfig`, one
group of settings per stage.
"""

from perchead.fit.config import FitConfig
from perchead.fit.driver import FitResult, fit_to_photo

__all__ = ["FitConfig", "FitResult", "fit_to_photo"]
