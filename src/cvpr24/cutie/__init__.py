"""Cutie: video object segmentation with object-level memory reading (CVPR 2024).

Public API::

    from cvpr24.cutie import CutieConfig, CutieModel, load_official_checkpoint
    from cvpr24.cutie import InferenceConfig, VideoSegmenter, segment_video, evaluate_vos
"""

from cvpr24.cutie.inference import InferenceConfig, LongTermConfig, VideoSegmenter, segment_video
from cvpr24.cutie.model import CutieConfig, CutieModel
from cvpr24.cutie.weights import load_official_checkpoint

__all__ = [
    "CutieConfig",
    "CutieModel",
    "InferenceConfig",
    "LongTermConfig",
    "VideoSegmenter",
    "load_official_checkpoint",
    "segment_video",
]
