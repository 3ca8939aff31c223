"""The ten modules of the library: a small, explicit table.

Nothing here imports a module: ``cvpr24 --help`` and ``cvpr24 list`` stay fast, and a
module whose optional dependencies are missing does not break the others.

A module plugs in by existing as ``cvpr24/<name>/`` with (both optional):

- ``reproduce.py``: ``CLAIMS`` (list of short claim statements) and
  ``run(out_dir, quick=True, seeds=None) -> cvpr24.common.Result``;
- ``cli.py``: ``register(parser)``, which adds the module's subcommands to the
  ``cvpr24 <name>`` parser (each sets ``func=`` with ``set_defaults``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    paper: str
    description: str
    extra: str | None = None  # the pip extra holding its heavy dependencies
    requires: tuple[str, ...] = ()  # import names that extra provides
    budget_s: int = 300  # quick-reproduction time budget (DESIGN.md: 5 minutes)

    def missing_requirements(self) -> list[str]:
        """Import names of the module's optional dependencies that are not installed."""
        return [r for r in self.requires if importlib.util.find_spec(r) is None]

    @property
    def implemented(self) -> bool:
        return importlib.util.find_spec(f"cvpr24.{self.name}") is not None

    @property
    def has_reproduction(self) -> bool:
        return (
            self.implemented
            and importlib.util.find_spec(f"cvpr24.{self.name}.reproduce") is not None
        )

    @property
    def has_cli(self) -> bool:
        return self.implemented and importlib.util.find_spec(f"cvpr24.{self.name}.cli") is not None

    def install_hint(self) -> str:
        return f"pip install 'cvpr24[{self.extra}]'" if self.extra else "pip install cvpr24"


MODULES: dict[str, ModuleInfo] = {
    m.name: m
    for m in [
        ModuleInfo(
            "lidar",
            "Resolution Limit of Single-Photon LiDAR",
            "Depth error vs pixel count at a fixed photon budget; optimal SPAD binning.",
            extra="lidar",
            requires=("h5py", "PIL"),
            budget_s=180,
        ),
        ModuleInfo(
            "hcc",
            "Hierarchical Correlation Clustering and Tree Preserving Embedding",
            "Hierarchical clustering of signed similarities, tree-preserving and minimax embeddings.",
            extra="hcc",
            requires=("numba",),
            budget_s=120,
        ),
        ModuleInfo(
            "spa",
            "Towards Calibrated Multi-label Deep Neural Networks",
            "Strictly proper asymmetric (SPA) loss and label pair regularizer; calibration metrics.",
            extra="spa",  # Pillow, for image datasets only: the losses and metrics need nothing
            budget_s=180,
        ),
        ModuleInfo(
            "sag",
            "Subject-Agnostic Guidance for subject-driven text-to-image",
            "Dual classifier-free guidance with a subject-agnostic condition, as diffusers pipelines.",
            extra="sag",
            requires=("diffusers", "transformers", "PIL"),
        ),
        ModuleInfo(
            "lotus",
            "LOTUS: Evasive and Resilient Backdoor Attacks through Sub-Partitioning",
            "Sub-partitioned backdoor attack with trigger focusing, and the defenses it evades.",
            extra="lotus",
            requires=("PIL",),
        ),
        ModuleInfo(
            "cutie",
            "Putting the Object Back into Video Object Segmentation (Cutie)",
            "Video object segmentation with object-level memory reading.",
            extra="cutie",
            requires=("PIL",),
        ),
        ModuleInfo(
            "pixelsplat",
            "pixelSplat: 3D Gaussian Splats from Image Pairs",
            "Feed-forward 3D Gaussians from two images with probabilistic depth sampling.",
            extra="pixelsplat",
            requires=("plyfile", "PIL"),
        ),
        ModuleInfo(
            "gfars",
            "G-FARS: Gradient-Field-based Auto-Regressive Sampling for 3D Part Grouping",
            "3D part grouping by gradient-field auto-regressive sampling.",
            extra="mesh",
            requires=("trimesh",),
        ),
        ModuleInfo(
            "text2hoi",
            "Text2HOI: Text-guided 3D Motion Generation for Hand-Object Interaction",
            "Text-guided hand-object interaction generation with contact maps.",
            extra="text2hoi",
            requires=("trimesh",),
        ),
        ModuleInfo(
            "egothink",
            "Can Vision-Language Models Think from a First-Person Perspective? (EgoThink)",
            "Evaluation harness for the EgoThink first-person VQA benchmark.",
            extra="egothink",
            requires=("httpx", "PIL", "pyarrow"),
        ),
    ]
}
