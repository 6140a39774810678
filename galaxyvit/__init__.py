"""Galaxy morphology with vision transformers: torch-free core shared by training and serving."""

__version__ = "0.1.0"
