"""pndm: fast, deployable diffusion sampling."""

__version__ = "0.1.0"
