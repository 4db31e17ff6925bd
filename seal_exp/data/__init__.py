"""Datasets and loaders."""

from seal_exp.data.loaders import make_loader
from seal_exp.data.splits import DataSplits

__all__ = ["DataSplits", "make_loader"]
