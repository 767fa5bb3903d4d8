"""CTR and user-behaviour prediction: feature encoding, CTR networks, behaviour pretraining, metrics, data.

>>> from tunefuse.tasks.ctr import CTR
>>> CTR(user="u", item="i").metric_name
'roc_auc'
"""
from .data import MOVIELENS_COLUMNS, label_sample, movielens_100k, time_split
from .features import FeatureEncoder, UnseenIdsWarning, add_history
from .metrics import auc, calibration, gauc, ranking_at_k, report
from .tabular import TabularModel

__all__ = ["FeatureEncoder", "MOVIELENS_COLUMNS", "UnseenIdsWarning", "add_history", "auc", "calibration", "gauc",
           "TabularModel", "label_sample", "movielens_100k", "ranking_at_k", "report", "time_split"]
