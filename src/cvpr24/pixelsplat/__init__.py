"""pixelSplat (CVPR 2024): 3D Gaussian splats from image pairs.

See ``docs/pixelsplat.md``; the equation labels used in docstrings (E0-E16, R1-R4, SH1-SH3,
C1, P1, EP1-EP3, B1-B2, M1-M4) are defined in its "Equations" section.
"""

from cvpr24.pixelsplat import metrics
from cvpr24.pixelsplat.data import Scene, from_cameras_json, from_colmap, load_chunk, write_chunk
from cvpr24.pixelsplat.epipolar import EpipolarConfig, SelfAttentionConfig
from cvpr24.pixelsplat.gaussians import Gaussians, build_covariance, read_ply, write_ply
from cvpr24.pixelsplat.geometry import project_rays
from cvpr24.pixelsplat.model import PixelSplat, PixelSplatConfig
from cvpr24.pixelsplat.rasterizer import RenderOutput, project_gaussians, render_gaussians

__all__ = [
    "EpipolarConfig", "Gaussians", "PixelSplat", "PixelSplatConfig", "RenderOutput", "Scene",
    "SelfAttentionConfig", "build_covariance", "from_cameras_json", "from_colmap", "load_chunk", "metrics",
    "project_gaussians", "project_rays", "read_ply", "render_gaussians", "write_chunk", "write_ply",
]
