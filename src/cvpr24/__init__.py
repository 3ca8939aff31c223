"""cvpr24: ten CVPR 2024 papers as real, tested software.

Each paper lives in its own subpackage (``cvpr24.lidar``, ``cvpr24.hcc``, ...); see
``cvpr24.registry`` for the list and ``cvpr24 list`` on the command line.
"""

__version__ = "0.1.0"
