import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from cvpr24.lotus.data import synthetic_shapes
from cvpr24.lotus.models import SmallCNN
from cvpr24.lotus.partition import ClusterPartitioner, SurrogatePartitioner


@pytest.fixture(scope="module")
def shapes():
    return synthetic_shapes(40, seed=0)


def test_kmeans_on_pooled_pixels_recovers_styles(shapes):
    xv, sv = shapes.x[shapes.y == 0], shapes.style[shapes.y == 0]
    cp = ClusterPartitioner(4).fit(xv)
    assert adjusted_rand_score(sv.numpy(), cp.labels_) >= 0.9
    # ARI is invariant to relabelling the clusters
    perm = np.array([2, 0, 3, 1])
    assert adjusted_rand_score(sv.numpy(), perm[cp.labels_]) == pytest.approx(
        adjusted_rand_score(sv.numpy(), cp.labels_))


def test_cluster_partitioner_deterministic_and_gmm(shapes):
    xv = shapes.x[shapes.y == 3]
    a = ClusterPartitioner(4, seed=30).fit(xv).labels_
    b = ClusterPartitioner(4, seed=30).fit(xv).labels_
    assert np.array_equal(a, b)
    g = ClusterPartitioner(4, method="gmm").fit(xv)
    assert g.predict(xv[:5]).shape == (5,)
    with pytest.raises(ValueError, match="method"):
        ClusterPartitioner(4, method="dbscan").fit(xv)


def test_surrogate_head_and_predict_uses_last_k_logits(shapes):
    x, y = shapes.x[:60], shapes.y[:60]
    ids = torch.arange(int((y == 0).sum())) % 3
    sp = SurrogatePartitioner(SmallCNN(width=4), 10, 3, epochs=1, batch_size=32, seed=0).fit(x, y, 0, ids)
    assert sp.surrogate_.linear.out_features == 13
    # a designed head: huge class logits, partition logit pattern favouring index 2
    with torch.no_grad():
        sp.surrogate_.linear.weight.zero_()
        sp.surrogate_.linear.bias.copy_(torch.tensor([100.0] * 10 + [0.0, 1.0, 5.0]))
    assert (sp.predict(x[:4]) == 2).all()
    # deterministic given the seed
    sp2 = SurrogatePartitioner(SmallCNN(width=4), 10, 3, epochs=1, batch_size=32, seed=0)
    torch.manual_seed(0)
    base = SmallCNN(width=4)
    a = SurrogatePartitioner(base, 10, 3, epochs=1, batch_size=32, seed=0).fit(x, y, 0, ids)
    b = SurrogatePartitioner(base, 10, 3, epochs=1, batch_size=32, seed=0).fit(x, y, 0, ids)
    assert torch.equal(a.predict(x), b.predict(x))
    with pytest.raises(ValueError, match="cluster_ids"):
        sp2.fit(x, y, 0, ids[:-1])
    assert isinstance(sp.surrogate_, nn.Module)
