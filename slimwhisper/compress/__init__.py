"""Structured pruning that physically removes weights.

Groups (``groups``) -> scores (``scores``, calibrated by ``calib``) -> allocation (``allocate``)
-> plan (``plan``) -> surgery (``surgery``) -> saved slim model. ``prune(PruneConfig)`` runs the
lot; ``sensitivity`` tables which components matter; ``recipes`` names common settings.
"""

from slimwhisper.compress.alloc_config import AllocConfig, AllocError, Threshold
from slimwhisper.compress.allocate import Allocation, allocate
from slimwhisper.compress.calib import CalibConfig, CalibError, CalibExample, example_loss, prepare
from slimwhisper.compress.groups import Group, GroupSpace, ParamSlice, enumerate_groups
from slimwhisper.compress.plan import PlanError, PrunePlan, PruneRecord
# Importing the package registers every score: gradient scores in ``scores``, Gram scores
# (obs, flap, wanda) in ``gramscores`` (a submodule import always runs this file first). Before
# ``prune`` and ``recipes``: their recipes name these scores at import.
from slimwhisper.compress import gramscores  # noqa: F401
from slimwhisper.compress.prune import PruneConfig, PruneError, PruneResult, prune
from slimwhisper.compress.reconstruct_config import RECONSTRUCTORS, ReconstructConfig, ReconstructError
from slimwhisper.compress.recipes import RECIPES, Recipe, get_recipe, register_recipe
from slimwhisper.compress.scores import SCORES, Normalize, ScoreConfig, ScoreError, register_score, score_groups
from slimwhisper.compress.sensitivity import SensitivityConfig, SensitivityRow, run_sensitivity, sensitivity_table
from slimwhisper.compress.sensconfig import SensAllocConfig
from slimwhisper.compress.stats import StatsConfig
from slimwhisper.compress.surgery import apply_plan

__all__ = [
    "SCORES",
    "RECIPES",
    "RECONSTRUCTORS",
    "AllocConfig",
    "AllocError",
    "Allocation",
    "CalibConfig",
    "CalibError",
    "CalibExample",
    "Group",
    "GroupSpace",
    "Normalize",
    "ParamSlice",
    "PlanError",
    "PruneConfig",
    "PruneError",
    "PruneRecord",
    "PrunePlan",
    "PruneResult",
    "Recipe",
    "ReconstructConfig",
    "ReconstructError",
    "SensAllocConfig",
    "StatsConfig",
    "ScoreConfig",
    "ScoreError",
    "SensitivityConfig",
    "SensitivityRow",
    "Threshold",
    "allocate",
    "apply_plan",
    "enumerate_groups",
    "example_loss",
    "get_recipe",
    "prepare",
    "prune",
    "register_recipe",
    "register_score",
    "run_sensitivity",
    "score_groups",
    "sensitivity_table",
]
