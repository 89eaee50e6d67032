"""gentrain: a config-driven training CLI for image generative models."""

__version__ = "0.1.0"
