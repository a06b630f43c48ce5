"""Data layer: the interaction container, loaders of public formats, preprocessing, splits, generator."""

from recneg.data.interactions import Interactions, PositiveIndex, Split

__all__ = ["Interactions", "PositiveIndex", "Split", "load_dataset"]


def __getattr__(name):
    if name == "load_dataset":
        from recneg.data.datasets import load_dataset

        return load_dataset
    raise AttributeError(name)
