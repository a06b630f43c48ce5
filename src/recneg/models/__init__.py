"""Models: MF, LightGCN, two-tower; all meet the :class:`Recommender` protocol."""

from recneg.models.base import ModelView, Recommender, TableView

__all__ = ["ModelView", "Recommender", "TableView"]
