"""pixelSplat (CVPR 2024): 3D Gaussian splats from image pairs.

See ``docs/pixelsplat.md``; equation labels (E1..E16, R1..R4, SH1..SH3, ...) are defined
there.
"""

from cvpr24.pixelsplat.rasterizer import RenderOutput, project_gaussians, render_gaussians

__all__ = ["RenderOutput", "project_gaussians", "render_gaussians"]
