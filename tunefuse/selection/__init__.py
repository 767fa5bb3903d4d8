"""Choosing the backbone: transferability scores (LogME, a cross-validated linear probe) and ranking candidates."""
from .logme import logme, logme_columns
from .ranking import probe_scores, rank_backbones

__all__ = ["logme", "logme_columns", "probe_scores", "rank_backbones"]
