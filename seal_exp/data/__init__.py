"""Datasets and loaders."""

from seal_exp.data.embedded import DataSplits
from seal_exp.data.loaders import make_loader

__all__ = ["DataSplits", "make_loader"]
