"""Resolution limit of single-photon LiDAR (Chan et al., CVPR 2024), as a design tool and a
depth estimator.

At a fixed total photon budget alpha0, the depth error of a SPAD array is U-shaped in the
pixel count N: photon noise grows like N, the footprint's discretisation error falls like
1/N^2. This package holds the forward model, the per-pixel ML estimators, the exact and
closed-form MSE(N), the optimal pixel count, real-data loaders and binning advice.
See ``docs/lidar.md``, whose Equations section defines the labels L1-L22 the docstrings cite.
"""

from cvpr24.lidar.binning import BinningRecommendation, recommend_binning
from cvpr24.lidar.data import (
    from_deepinv,
    load_depth_map,
    load_histogram_cube,
    load_timestamps,
    save_histogram_cube,
    save_timestamps,
    to_deepinv,
)
from cvpr24.lidar.estimators import (
    EstimateInfo,
    background_rates,
    estimate_delay,
    fill_empty,
    histogram_log_likelihood,
    log_matched_filter,
    timestamp_log_likelihood,
)
from cvpr24.lidar.model import (
    LidarConfig,
    PhotonData,
    alpha0_from_hardware,
    bin_cube,
    bin_pixels,
    delay_to_depth,
    depth_mse,
    depth_to_delay,
    simulate_photons,
    to_histogram,
    uniform_bin_edges,
)
from cvpr24.lidar.scene import (
    C_LIGHT,
    AnalyticProfile,
    PixelMoments,
    Scene1D,
    Scene2D,
    pixel_moments,
    slope_energy,
)
from cvpr24.lidar.theory import (
    MSEBreakdown,
    continuous_mse,
    fisher_information,
    inv_poisson_moment,
    lock_in_probability,
    mse_closed_form,
    mse_curve,
    mse_exact,
    optimal_pixels,
    pixel_variance,
)

__all__ = [
    "AnalyticProfile",
    "C_LIGHT",
    "BinningRecommendation",
    "EstimateInfo",
    "LidarConfig",
    "MSEBreakdown",
    "PhotonData",
    "PixelMoments",
    "Scene1D",
    "Scene2D",
    "alpha0_from_hardware",
    "background_rates",
    "bin_cube",
    "bin_pixels",
    "continuous_mse",
    "delay_to_depth",
    "depth_mse",
    "depth_to_delay",
    "estimate_delay",
    "fill_empty",
    "fisher_information",
    "from_deepinv",
    "histogram_log_likelihood",
    "inv_poisson_moment",
    "load_depth_map",
    "load_histogram_cube",
    "load_timestamps",
    "lock_in_probability",
    "log_matched_filter",
    "mse_closed_form",
    "mse_curve",
    "mse_exact",
    "optimal_pixels",
    "pixel_moments",
    "pixel_variance",
    "recommend_binning",
    "save_histogram_cube",
    "save_timestamps",
    "simulate_photons",
    "slope_energy",
    "timestamp_log_likelihood",
    "to_deepinv",
    "to_histogram",
    "uniform_bin_edges",
]
