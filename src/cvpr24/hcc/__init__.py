"""Hierarchical correlation clustering, tree-preserving embedding and minimax distances.

Chehreghani & Chehreghani, *Hierarchical Correlation Clustering and Tree Preserving
Embedding*, CVPR 2024. Inputs are **signed dissimilarities**: negative = "same cluster",
positive = "different", zero = "no information". See ``docs/hcc.md``.
"""

from cvpr24.hcc.data import (
    SignedGraph,
    load_features,
    load_signed_edgelist,
    load_signed_matrix,
    make_signed_partition,
    resolve_shift,
    save_signed_edgelist,
    signed_from_features,
    similarity_to_dissimilarity,
)
from cvpr24.hcc.embedding import (
    explicit_tree_embedding,
    mds_embed,
    minimax_cc_labels,
    minimax_distances,
    minimax_embedding_matrix,
)
from cvpr24.hcc.estimators import (
    HCCConfig,
    HierarchicalCorrelationClustering,
    MinimaxCorrelationClustering,
    MinimaxEmbedding,
    TreePreservingEmbedding,
)
from cvpr24.hcc.linkage import (
    cc_cost,
    cc_cut,
    cc_path,
    cut_level,
    dendrogram_purity,
    hcc_linkage,
    hierarchy_cc_cost,
    level_distances,
    level_linkage,
    tree_distances,
    tree_linkage,
)
from cvpr24.hcc.plot import plot_dendrogram

__all__ = [
    "HCCConfig",
    "HierarchicalCorrelationClustering",
    "MinimaxCorrelationClustering",
    "MinimaxEmbedding",
    "SignedGraph",
    "TreePreservingEmbedding",
    "cc_cost",
    "cc_cut",
    "cc_path",
    "cut_level",
    "dendrogram_purity",
    "explicit_tree_embedding",
    "hcc_linkage",
    "hierarchy_cc_cost",
    "level_distances",
    "level_linkage",
    "load_features",
    "load_signed_edgelist",
    "load_signed_matrix",
    "make_signed_partition",
    "mds_embed",
    "minimax_cc_labels",
    "minimax_distances",
    "minimax_embedding_matrix",
    "plot_dendrogram",
    "resolve_shift",
    "save_signed_edgelist",
    "signed_from_features",
    "similarity_to_dissimilarity",
    "tree_distances",
    "tree_linkage",
]
