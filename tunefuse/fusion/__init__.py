"""Fusion of fitted members: output space (voting, selection, bagging, boosting, stacking), weight space (soups,
WiSE-FT, task arithmetic, TIES, DARE), test-time augmentation and distillation. One member protocol:
``[(name, estimator)]``."""
from .boxes import BoxFusion
from .distill import Distillation
from .leaderboard import cross_val_fusion, format_leaderboard, leaderboard
from .members import check_fitted_members, check_members, member_proba
from .output import (OUTPUT_METHODS, Bagging, Boosting, EnsembleSelection, FusionMethod, Stacking, Voting,
                     get_output_method)
from .persist import load_fusion, load_member, save_fusion, save_member
from .soups import WeightFusion, soup_from_checkpoints
from .tta import TestTimeAugmentation
from .weights import WEIGHT_METHODS

# Every fusion by name: the output-space estimators, then one WeightFusion entry per weight-space method.
FUSION_METHODS: dict[str, FusionMethod] = dict(OUTPUT_METHODS)
for _name, _entry in WEIGHT_METHODS.items():
    FUSION_METHODS[_name] = FusionMethod(
        _name, lambda members, _m=_name, **opts: WeightFusion(members, method=_m, **opts), "weight",
        _entry.paper, _entry.url)


def get_fusion_method(name: str) -> FusionMethod:
    if name not in FUSION_METHODS:
        raise ValueError(f"fusion method {name!r} is unknown; valid: {sorted(FUSION_METHODS)}")
    return FUSION_METHODS[name]


__all__ = ["Bagging", "BoxFusion", "Boosting", "Distillation", "EnsembleSelection", "FUSION_METHODS", "Stacking",
           "Voting",
           "TestTimeAugmentation", "WeightFusion", "check_fitted_members", "check_members", "cross_val_fusion",
           "format_leaderboard",
           "get_fusion_method", "get_output_method", "leaderboard", "load_fusion", "load_member", "member_proba",
           "save_fusion", "save_member", "soup_from_checkpoints"]
