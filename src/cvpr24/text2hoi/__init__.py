"""Text2HOI (CVPR 2024): text-guided two-hand + object motion generation with contact maps.

See ``docs/text2hoi.md``. Equation labels T1..T20 (method), M1..M4 (MANO), R1..R2 (rotations)
and H1..H8 (metrics) are defined in its Equations section.
"""

from cvpr24.text2hoi.diffusion import GaussianDiffusion, cosine_betas
from cvpr24.text2hoi.mano import ManoLayer, ManoModel, ProceduralHand, load_mano, save_mano_pickle
from cvpr24.text2hoi.model import (
    ContactCVAE,
    HandRefiner,
    LengthCVAE,
    PointNetfeat,
    Text2HOIConfig,
    TextHOM,
)

__all__ = [
    "ContactCVAE", "GaussianDiffusion", "HandRefiner", "LengthCVAE", "ManoLayer", "ManoModel",
    "PointNetfeat", "ProceduralHand", "Text2HOIConfig", "TextHOM", "cosine_betas", "load_mano",
    "save_mano_pickle",
]
