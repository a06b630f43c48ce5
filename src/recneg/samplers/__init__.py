"""Negative samplers. Every sampler returns a :class:`Negatives` record (see ``base.py``)."""

from recneg.samplers.base import Negatives, Sampler, categorical_pool, uniform_pool

__all__ = ["Negatives", "Sampler", "uniform_pool", "categorical_pool"]
