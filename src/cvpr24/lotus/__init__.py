"""LOTUS (CVPR 2024): sub-partitioned backdoor attack with trigger focusing, and defenses.

See ``docs/lotus.md``. Equation tags ``LOTUS L1..L9`` follow the numbering of that page (the
paper's own numbers could not be read).
"""

from cvpr24.lotus import baselines, defenses, metrics
from cvpr24.lotus.attack import (
    AttackFailedError,
    LotusArtifacts,
    LotusAttack,
    LotusConfig,
    LotusLoss,
    lotus_loss,
    poison_batch,
    poison_train,
    reference_trigger_focus_batch,
    train_clean,
    trigger_focus_batch,
)
from cvpr24.lotus.data import (
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_npz,
    random_crop_flip,
    synthetic_gratings,
    synthetic_shapes,
)
from cvpr24.lotus.io import load_model, load_official_state_dict, save_model
from cvpr24.lotus.models import SmallCNN, build_model, replace_head
from cvpr24.lotus.partition import (
    ClusterPartitioner,
    ConstantPartitioner,
    FixedPartitioner,
    LpipsFeatures,
    PrecomputedFeatures,
    SurrogatePartitioner,
    pooled_pixels,
)
from cvpr24.lotus.triggers import PatchTrigger, Trigger, TriggerSet, WarpTrigger, codes

__all__ = [
    "AttackFailedError", "ClusterPartitioner", "ConstantPartitioner", "FixedPartitioner",
    "LotusArtifacts", "LotusAttack", "LotusConfig", "LotusLoss", "LpipsFeatures", "PatchTrigger",
    "PrecomputedFeatures",
    "SmallCNN", "SurrogatePartitioner", "Trigger", "TriggerSet", "WarpTrigger", "baselines",
    "build_model", "codes", "defenses", "load_cifar10", "load_dataset", "load_image_folder",
    "load_model", "load_npz", "load_official_state_dict", "lotus_loss", "metrics", "poison_batch",
    "poison_train", "pooled_pixels", "random_crop_flip", "reference_trigger_focus_batch",
    "replace_head", "save_model", "synthetic_gratings", "synthetic_shapes", "train_clean", "trigger_focus_batch",
]
