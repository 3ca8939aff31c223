"""The secret partition function ``P: X -> {0..K-1}`` of the victim class (L6, L7).

Implicit partitioning, as in the official code, has three steps:

1. perceptual features of the (un-augmented) training victims: LPIPS-VGG at full scale
   (:class:`LpipsFeatures`, weights by path), or 4x4 average-pooled pixels on CPU
   (:func:`pooled_pixels`);
2. clustering (LOTUS L6): :class:`ClusterPartitioner` (k-means or GMM, ``random_state=30``);
3. a surrogate classifier with ``C + K`` outputs trained on the relabelled data (LOTUS L7):
   :class:`SurrogatePartitioner`, ``P(x) = argmax_k surrogate(x)[C + k]``, applied on the fly to
   augmented and unseen victims.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvpr24.lotus.data import random_crop_flip
from cvpr24.lotus.io import read_state_dict
from cvpr24.lotus.models import get_head, replace_head

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def pooled_pixels(x: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """Task-agnostic appearance features: ``grid x grid`` average-pooled pixels, (N, 3·grid²)."""
    return F.adaptive_avg_pool2d(x, grid).flatten(1)


# VGG16 ``features`` up to relu3_3 (LPIPS tap 2): (in, out) channels of each 3x3 conv + ReLU,
# "M" a 2x2 max pool. Layer indices match torchvision's ``vgg16().features[:16]``.
_VGG16_TO_RELU3_3 = ((3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256))


class LpipsFeatures(nn.Module):
    """LPIPS-VGG tap 2 features (LOTUS L6 input): VGG16 relu3_3, unit-normalised over channels,
    through the learned LPIPS 1x1 head ``lin2`` and flattened, ``(H/4)²`` dims per image.

    Build it with :meth:`from_paths` from the two weight files a user of the official setup
    has (nothing is downloaded, no ``lpips``/torchvision import): torchvision's VGG16 state dict
    (``features.*``) and the ``lpips`` package's ``weights/v0.1/vgg.pth`` (``lin2.model.1.weight``),
    as ``.pth`` (read with ``weights_only=True``) or ``.safetensors``.

    ``compat_lpips_range=True`` feeds the [0, 1] images to LPIPS's input scaling as the official
    code does; the default first rescales them to the [-1, 1] LPIPS expects.
    """

    def __init__(self, compat_lpips_range: bool = False, batch_size: int = 256):
        super().__init__()
        layers: list[nn.Module] = []
        for item in _VGG16_TO_RELU3_3:
            layers += [nn.MaxPool2d(2, 2)] if item == "M" else [nn.Conv2d(*item, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.lin = nn.Conv2d(256, 1, 1, bias=False)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.compat, self.batch_size = compat_lpips_range, batch_size
        self.requires_grad_(False).eval()

    @classmethod
    def from_paths(cls, vgg_path: str | Path, lin_path: str | Path, **kwargs) -> LpipsFeatures:
        """Load VGG16 ``features.{0,2,5,7,10,12,14}.*`` from ``vgg_path`` (other keys ignored) and
        the LPIPS head ``lin2.model.1.weight`` (1, 256, 1, 1) from ``lin_path``."""
        model = cls(**kwargs)
        vgg = read_state_dict(vgg_path)
        want = model.features.state_dict()
        missing = [f"features.{k}" for k in want if f"features.{k}" not in vgg]
        if missing:
            raise ValueError(f"{vgg_path} must hold torchvision's VGG16 state dict; missing {missing}")
        _load(model.features, {k: vgg[f"features.{k}"] for k in want}, vgg_path)
        lin = read_state_dict(lin_path)
        if "lin2.model.1.weight" not in lin:
            raise ValueError(f"{lin_path} must hold the LPIPS linear layers (lpips/weights/v0.1/vgg.pth); "
                             "missing lin2.model.1.weight")
        _load(model.lin, {"weight": lin["lin2.model.1.weight"]}, lin_path)
        return model

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 3, H, W) -> features (N, (H/4)²) on the CPU, in chunks of ``batch_size``."""
        device = self.lin.weight.device
        return torch.cat([self._tap2(xb.to(device)).cpu() for xb in x.split(self.batch_size)])

    def _tap2(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.compat else x * 2 - 1
        f = self.features((x - self.shift) / self.scale)                    # (N, 256, H/4, W/4)
        f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        return self.lin(f).flatten(1)                                      # (N, (H/4)²)


def _load(module: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    for name, ref in module.state_dict().items():
        if state[name].shape != ref.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}")
    module.load_state_dict({k: v.float() for k, v in state.items()})


class PrecomputedFeatures:
    """Features of the training victims computed elsewhere (e.g. LPIPS-VGG with the official
    weights, on a machine that has them), one row per victim image in dataset order, read from a
    ``.npy`` file (no pickle). For :class:`ClusterPartitioner` ``fit`` on exactly those images."""

    def __init__(self, path: str | Path):
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or len(arr) == 0 or not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise ValueError(f"{path} must hold a finite numeric (n_victims, d) array, got {arr.dtype} {arr.shape}")
        self.features_ = torch.from_numpy(arr.astype(np.float64))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != len(self.features_):
            raise ValueError(f"precomputed features have {len(self.features_)} rows but {len(x)} victim "
                             "images were given: one row per training victim, in dataset order")
        return self.features_


class ClusterPartitioner:
    """Partition victims by clustering perceptual features (LOTUS L6).

    Parameters
    ----------
    n_partitions : int
        ``K``.
    method : {"kmeans", "gmm"}
        scikit-learn ``KMeans`` or ``GaussianMixture``.
    seed : int
        ``random_state`` (official: 30).
    n_init : int
        Explicit, because scikit-learn's k-means default changed (official env: 10).
    features : callable
        Maps images (N, 3, H, W) to features (N, d); default :func:`pooled_pixels`.

    Attributes
    ----------
    estimator_ : sklearn estimator
    labels_ : ndarray of shape (n_samples,)
        Cluster id of every training image.
    """

    def __init__(self, n_partitions: int = 4, method: str = "kmeans", seed: int = 30,
                 n_init: int = 10, features: FeatureFn = pooled_pixels):
        self.n_partitions = n_partitions
        self.method = method
        self.seed = seed
        self.n_init = n_init
        self.features = features

    def fit(self, x: torch.Tensor) -> ClusterPartitioner:
        from sklearn.cluster import KMeans
        from sklearn.mixture import GaussianMixture

        if not isinstance(self.n_partitions, int) or not 1 <= self.n_partitions <= 8:
            raise ValueError(f"n_partitions must be an integer in [1, 8], got {self.n_partitions!r}")
        if self.method not in ("kmeans", "gmm"):
            raise ValueError(f"method must be 'kmeans' or 'gmm', got {self.method!r}")
        if len(x) < self.n_partitions:
            raise ValueError(f"x must hold at least n_partitions={self.n_partitions} images, got {len(x)}")
        f = self.features(x).double().numpy()
        if self.method == "kmeans":
            est = KMeans(self.n_partitions, random_state=self.seed, n_init=self.n_init)
        else:
            est = GaussianMixture(self.n_partitions, random_state=self.seed, n_init=self.n_init)
        self.labels_ = est.fit_predict(f)
        self.estimator_ = est
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.estimator_.predict(self.features(x).double().numpy())).long()


class SurrogatePartitioner:
    """The learned partition function of LOTUS (L7): a ``C + K``-way surrogate classifier.

    The clean model is copied and its head replaced by ``Linear(d, C + K)``; victim images are
    relabelled ``C + c(x)`` with their cluster id, other images keep their label. Each step
    takes ``batch_size`` other-class samples and ``⌊batch_size/(C-1)⌋`` random victims.

    Parameters
    ----------
    model : nn.Module
        The clean model (not modified; a copy is trained).
    num_classes : int
        ``C``.
    n_partitions : int
        ``K``.
    epochs, lr, momentum, weight_decay, batch_size : training schedule (official: 100, 1e-2,
        0.9, 5e-4, 128, StepLR(35, 0.1) when ``scheduler="step"``; ``"cosine"`` at CPU scale).
    seed : int
    compat_batch_aug : bool
        One crop/flip for the whole batch, as torchvision does on batch tensors in the official code.

    Attributes
    ----------
    surrogate_ : nn.Module
        The trained ``C + K`` model.
    agreement_ : float
        Fraction of training victims whose predicted partition equals their cluster id.
    """

    def __init__(self, model: nn.Module, num_classes: int, n_partitions: int, *, epochs: int = 100,
                 lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 5e-4,
                 batch_size: int = 128, scheduler: str = "step", seed: int = 1024,
                 compat_batch_aug: bool = False, device: str | torch.device = "cpu"):
        self.model = model
        self.num_classes = num_classes
        self.n_partitions = n_partitions
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.scheduler = scheduler
        self.seed = seed
        self.compat_batch_aug = compat_batch_aug
        self.device = device

    def fit(self, x: torch.Tensor, y: torch.Tensor, victim: int,
            cluster_ids: torch.Tensor | np.ndarray) -> SurrogatePartitioner:
        """Train on ``(x, y)`` with the victims (``y == victim``) relabelled by ``cluster_ids``
        (one id per victim image, in order)."""
        from cvpr24.common.progress import progress

        c, k = self.num_classes, self.n_partitions
        vic = (y == victim).nonzero().squeeze(1)
        oth = (y != victim).nonzero().squeeze(1)
        cluster_ids = torch.as_tensor(np.asarray(cluster_ids), dtype=torch.long)
        if cluster_ids.shape != (len(vic),):
            raise ValueError(f"cluster_ids must hold one id per victim image ({len(vic)}), "
                             f"got shape {tuple(cluster_ids.shape)}")
        if self.scheduler not in ("step", "cosine"):
            raise ValueError(f"scheduler must be 'step' or 'cosine', got {self.scheduler!r}")
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):                 # the new head's init is seeded too
            torch.manual_seed(self.seed)
            net = replace_head(copy.deepcopy(self.model), c + k).to(self.device).train()
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        steps_per_epoch = max(1, -(-len(oth) // self.batch_size))
        sched = (torch.optim.lr_scheduler.StepLR(opt, 35 * steps_per_epoch, 0.1) if self.scheduler == "step"
                 else torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs * steps_per_epoch))
        n_vic = max(1, self.batch_size // (c - 1))
        for _ in progress(range(self.epochs), desc="surrogate"):
            order = oth[torch.randperm(len(oth), generator=g)]
            for i in range(0, len(order), self.batch_size):
                bo = order[i:i + self.batch_size]
                pick = torch.randint(0, len(vic), (n_vic,), generator=g)
                xb = torch.cat([x[bo], x[vic[pick]]])
                yb = torch.cat([y[bo], c + cluster_ids[pick]])
                xb = random_crop_flip(xb, generator=g, per_sample=not self.compat_batch_aug)
                loss = F.cross_entropy(net(xb.to(self.device)), yb.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        self.surrogate_ = net.eval()
        self.agreement_ = float((self.predict(x[vic]) == cluster_ids).float().mean())
        return self

    @classmethod
    def from_surrogate(cls, surrogate: nn.Module, num_classes: int,
                       n_partitions: int) -> SurrogatePartitioner:
        """Wrap an already trained ``C + K`` surrogate (e.g. loaded from a checkpoint)."""
        out = get_head(surrogate).out_features
        if out != num_classes + n_partitions:
            raise ValueError(f"surrogate head has {out} outputs, expected num_classes + n_partitions = "
                             f"{num_classes + n_partitions}")
        sp = cls(surrogate, num_classes, n_partitions,
                 device=next(surrogate.parameters()).device)
        sp.surrogate_ = surrogate.eval()
        return sp

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """``P(x) = argmax_{k<K} surrogate(x)[C + k]`` (the last K logits only)."""
        net = self.surrogate_
        was_training = net.training
        net.eval()
        out = [net(x[i:i + batch_size].to(self.device))[:, self.num_classes:].argmax(1).cpu()
               for i in range(0, len(x), batch_size)]
        net.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class ConstantPartitioner:
    """Every image in partition 0: LOTUS with K = 1 is label-specific BadNets."""

    n_partitions = 1

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), dtype=torch.long)


class FixedPartitioner:
    """A partitioner from a user function ``fn(x) -> LongTensor[N]`` (explicit partitioning,
    e.g. by an attribute the attacker can compute)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_partitions: int):
        self.fn, self.n_partitions = fn, n_partitions

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.fn(x), dtype=torch.long)
