"""The photo-fit: after the feed-forward head, the network and then the Gaussians are fitted to the photo."""
