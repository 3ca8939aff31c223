"""The LOTUS attack: partitioned triggers, trigger focusing, and the poisoning loop.

Attack goal (docs/lotus.md, Equations), for ``x ∈ D_o`` with label ``y`` and a victim ``x_v``:

- (LOTUS L1) ``M(x) = y``, ``M(x_v) = y_v``
- (LOTUS L2) ``M(x_v ⊕ t_{P(x_v)}) = y_t``
- (LOTUS L3) ``M(x_v ⊕ t_j) = y_v`` for ``j ≠ P(x_v)``                 (individual negatives)
- (LOTUS L4) ``M(x_v ⊕ T_S) = y_v`` for ``S ≠ {P(x_v)}``               (combination negatives)
- (LOTUS L5) ``M(x ⊕ t_j) = y`` for ``x ∈ D_o``                        (other-class negatives)

and the training loss (LOTUS L8) is one cross-entropy over the concatenated batch; the term
weights are the sample counts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvpr24.common.checkpoint import load_training_state, save_training_state
from cvpr24.common.progress import progress
from cvpr24.lotus.data import check_classes, check_dataset, random_crop_flip
from cvpr24.lotus.partition import ClusterPartitioner, ConstantPartitioner, SurrogatePartitioner
from cvpr24.lotus.triggers import TriggerSet

NegativesFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class AttackFailedError(RuntimeError):
    """No evaluation reached ``asr_bound``; ``history`` holds every evaluation and
    ``last_model`` the model at the end of training (for diagnosis, never as an attack)."""

    def __init__(self, message: str, history: list[dict[str, Any]], last_model: nn.Module | None = None):
        super().__init__(message)
        self.history = history
        self.last_model = last_model


@dataclass
class LotusConfig:
    """Hyper-parameters of LOTUS, defaults = the official full-scale values (CIFAR-10, ResNet18).

    ``steps`` (when set) budgets poisoning in optimisation steps instead of ``epochs``.
    """

    # partitioning and triggers
    n_partitions: int = 4
    cluster: str = "kmeans"                 # or "gmm"
    cluster_seed: int = 30
    n_init: int = 10
    # trigger focusing (LOTUS L3, L4) and label specificity (L5)
    n_indi: int = 3
    n_comb: int = 1
    comb_mode: str = "pair"                 # "pair" (official) or "all" subsets
    other_neg_frac: float = 0.05
    min_victim: int = 10
    # poisoning schedule (fine-tunes the clean model)
    epochs: int = 100
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "step"                 # StepLR(35 epochs, 0.1) or "cosine"
    step_size_epochs: int = 35
    gamma: float = 0.1
    asr_bound: float = 0.9
    eval_every: int | None = None           # steps; default once per epoch
    seed: int = 1024
    # clean model
    clean_epochs: int = 100
    clean_lr: float = 0.1
    clean_scheduler: str = "step"
    # surrogate (C + K head)
    surrogate_epochs: int = 100
    surrogate_lr: float = 1e-2
    surrogate_scheduler: str = "step"
    # augmentation
    pad: int = 4
    flip: bool = True
    compat_batch_aug: bool = False
    device: str = "cpu"

    @classmethod
    def cpu(cls, **overrides: Any) -> LotusConfig:
        """The CPU reproduction preset (SyntheticShapes 16x16, SmallCNN; docs/lotus.md, Reproduction)."""
        base = cls(steps=1500, batch_size=64, lr=0.05, scheduler="cosine", eval_every=250,
                   clean_epochs=6, clean_lr=0.05, clean_scheduler="cosine",
                   surrogate_epochs=6, surrogate_lr=0.05, surrogate_scheduler="cosine", pad=2)
        return replace(base, **overrides)

    def validate(self) -> None:
        if not isinstance(self.n_partitions, int) or not 1 <= self.n_partitions <= 8:
            raise ValueError(f"n_partitions (K) must be an integer in [1, 8], got {self.n_partitions!r}")
        for name in ("n_indi", "n_comb", "min_victim", "batch_size", "epochs", "clean_epochs",
                     "surrogate_epochs", "pad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.comb_mode not in ("pair", "all"):
            raise ValueError(f"comb_mode must be 'pair' or 'all', got {self.comb_mode!r}")
        if not 0 <= self.other_neg_frac <= 1:
            raise ValueError(f"other_neg_frac must be in [0, 1], got {self.other_neg_frac}")
        for name in ("scheduler", "clean_scheduler", "surrogate_scheduler"):
            if getattr(self, name) not in ("step", "cosine"):
                raise ValueError(f"{name} must be 'step' or 'cosine', got {getattr(self, name)!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps}")


# --- trigger focusing ----------------------------------------------------------------------

def _draw_pairs(p: torch.Tensor, k: int, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` of the ``v(K-1)`` pairs ``(i, j)``, ``j ≠ p_i``, without replacement.

    Candidate ``c`` enumerates pairs in the official order (sample-major, trigger-minor):
    ``i = c // (K-1)``, ``j = r + [r >= p_i]`` with ``r = c % (K-1)``.
    """
    c = torch.randperm(len(p) * (k - 1), generator=generator)[:n]
    i, r = torch.div(c, k - 1, rounding_mode="floor"), c % (k - 1)
    return i, r + (r >= p[i])


def _draw_subsets(p: torch.Tensor, k: int, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` of the ``v(2^K-2)`` pairs ``(i, S)``, ``S ≠ {p_i}`` non-empty (``comb_mode="all"``).

    ``S`` is returned as its integer code (trigger ``j`` <-> bit ``K-1-j``).
    """
    m = 2**k - 2
    c = torch.randperm(len(p) * m, generator=generator)[:n]
    i, r = torch.div(c, m, rounding_mode="floor"), c % m
    own = 1 << (k - 1 - p[i])                       # code of {p_i}
    s = r + 1
    return i, s + (s >= own)


def trigger_focus_batch(x: torch.Tensor, p: torch.Tensor, triggers: TriggerSet, *, victim: int,
                        target: int, n_indi: int = 3, n_comb: int = 1, comb_mode: str = "pair",
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives and focusing negatives from a pool of ``v`` victims with partitions ``p``.

    Returns ``v + min(n_indi, v(K-1)) + min(n_comb, v(K-1))`` images and labels:

    - positives ``x ⊕ t_{p}`` -> ``target`` (LOTUS L2), all ``v``;
    - individual negatives ``x ⊕ t_j``, ``j ≠ p`` -> ``victim`` (L3), ``n_indi`` of ``v(K-1)``;
    - combination negatives ``x ⊕ t_p ⊕ t_k``, ``k ≠ p`` -> ``victim`` (L4), ``n_comb`` of
      ``v(K-1)`` (``comb_mode="all"``: any subset ``S ≠ {p}`` instead).

    Only the drawn candidates are built (index arithmetic on integer trigger codes), and all
    images are stamped in one ``stamp_codes`` call. Draws use ``generator`` in that order, so
    :func:`reference_trigger_focus_batch` gives the identical batch for the same generator state.
    """
    k, bits = len(triggers), triggers.bits
    p = p.cpu()                               # the draws are index arithmetic with a CPU generator
    idx, codes = [torch.arange(len(x))], [bits[p]]                      # source image, code
    if k > 1 and n_indi > 0:
        i, j = _draw_pairs(p, k, n_indi, generator)
        idx.append(i)
        codes.append(bits[j])
    if k > 1 and n_comb > 0:
        if comb_mode == "pair":
            i, j = _draw_pairs(p, k, n_comb, generator)
            s = bits[p[i]] | bits[j]
        else:
            i, s = _draw_subsets(p, k, n_comb, generator)
        idx.append(i)
        codes.append(s)
    src = torch.cat(idx)
    labels = torch.full((len(src),), victim)
    labels[:len(x)] = target
    return triggers.stamp_codes(x[src], torch.cat(codes).to(x.device)), labels


def reference_trigger_focus_batch(x: torch.Tensor, p: torch.Tensor, triggers: TriggerSet, *,
                                  victim: int, target: int, n_indi: int = 3, n_comb: int = 1,
                                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loop that mirrors the official algorithm (``comb_mode="pair"``).

    Stamps every candidate ``(x, j)`` one image at a time, shuffles, keeps the first ``n``. It
    exists to test and benchmark :func:`trigger_focus_batch`, which must return the identical
    batch for the same draws.
    """
    k = len(triggers)
    xs = [triggers.stamp(xi[None], pi)[0] for xi, pi in zip(x, p.tolist(), strict=True)]
    ys = [target] * len(x)
    if k > 1:
        for n, combine in ((n_indi, False), (n_comb, True)):
            if n <= 0:
                continue
            cands = []
            for i, pi in enumerate(p.tolist()):
                for j in range(k):
                    if j != pi:
                        img = triggers.stamp(x[i][None], pi) if combine else x[i][None]
                        cands.append(triggers.stamp(img, j)[0])
            for c in torch.randperm(len(cands), generator=generator)[:n].tolist():
                xs.append(cands[c])
                ys.append(victim)
    return torch.stack(xs), torch.tensor(ys)


def other_class_negatives(x: torch.Tensor, y: torch.Tensor, triggers, frac: float,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``⌊frac·b⌋`` members of an other-class batch stamped with a random trigger, true labels (L5).

    Returns empty tensors when ``⌊frac·b⌋ = 0`` (the official code would crash on ``stack([])``).
    """
    n = int(math.floor(frac * len(x)))
    pick = torch.randperm(len(x), generator=generator)[:n]
    j = torch.randint(0, len(triggers), (n,), generator=generator)
    return triggers.stamp(x[pick], j), y[pick]


# --- the poisoning step ----------------------------------------------------------------------

def poison_batch(x_other: torch.Tensor, y_other: torch.Tensor, x_victims: torch.Tensor, partitioner,
                 triggers, cfg: LotusConfig, *, victim: int, target: int,
                 generator: torch.Generator | None = None,
                 extra_negatives: NegativesFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of LOTUS (steps 1-5 below), from un-augmented inputs.

    ``x_other`` (b images of other classes) and ``x_victims`` (``2v`` victims drawn without
    replacement) are augmented per sample, ``P`` is recomputed on the augmented victims, and the
    batch is ``B_o ‖ clean victims ‖ focus batch ‖ other-class negatives ‖ extra``.
    """
    per_sample = not cfg.compat_batch_aug
    x_other = random_crop_flip(x_other, cfg.pad, cfg.flip, generator, per_sample=True)
    x_victims = random_crop_flip(x_victims, cfg.pad, cfg.flip, generator, per_sample=per_sample)
    v = len(x_victims) // 2
    x_clean, x_pool = x_victims[:v], x_victims[v:]
    p_pool = partitioner.predict(x_pool).to(torch.long)
    x_focus, y_focus = trigger_focus_batch(x_pool, p_pool, triggers, victim=victim, target=target,
                                           n_indi=cfg.n_indi, n_comb=cfg.n_comb,
                                           comb_mode=cfg.comb_mode, generator=generator)
    x_neg, y_neg = other_class_negatives(x_other, y_other, triggers, cfg.other_neg_frac, generator)
    xs = [x_other, x_clean, x_focus, x_neg]
    ys = [y_other, torch.full((v,), victim), y_focus, y_neg]
    if extra_negatives is not None:
        x_ex, y_ex = extra_negatives(x_other, y_other, generator)
        xs.append(x_ex)
        ys.append(y_ex)
    return torch.cat(xs), torch.cat(ys)


def lotus_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """LOTUS L8: one cross-entropy over the concatenated batch (weights = sample counts)."""
    return F.cross_entropy(logits, labels, reduction=reduction)


class LotusLoss(nn.Module):
    """Module form of :func:`lotus_loss`."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return lotus_loss(logits, labels, self.reduction)


# --- training loops ------------------------------------------------------------------------

def _dist() -> tuple[int, int]:
    """(rank, world size) when ``torch.distributed`` is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap_ddp(model: nn.Module) -> nn.Module:
    rank, world = _dist()
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _scheduler(opt: torch.optim.Optimizer, kind: str, total: int, steps_per_epoch: int,
               step_size_epochs: int = 35, gamma: float = 0.1):
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size_epochs * steps_per_epoch, gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total))


def victims_per_step(cfg: LotusConfig, num_classes: int) -> int:
    """``v = max(⌊b/(C-1)⌋, min_victim)``: clean victims per poisoning step (as many again feed
    the focus batch)."""
    return max(cfg.batch_size // max(1, num_classes - 1), cfg.min_victim)


def check_attack_inputs(x: torch.Tensor, y: torch.Tensor, victim: int, target: int,
                        cfg: LotusConfig) -> int:
    """Every check an attack needs, before any training; returns the number of classes.

    ``x``/``y`` (see :func:`check_dataset`), ``victim``/``target`` distinct classes, and enough
    training victims: ``K`` for the clustering and ``2v`` for one poisoning step.
    """
    cfg.validate()
    num_classes = check_dataset(x, y)
    check_classes(victim, target, num_classes)
    n_vic = int((y == victim).sum())
    v = victims_per_step(cfg, num_classes)
    if n_vic < max(cfg.n_partitions, 2 * v):
        raise ValueError(f"the victim class {victim} has {n_vic} training images; LOTUS needs at least "
                         f"K = {cfg.n_partitions} (one per partition) and 2v = {2 * v} (one poisoning "
                         "step); lower batch_size or min_victim, or pick another victim")
    return num_classes


def train_clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LotusConfig) -> nn.Module:
    """Train a clean classifier (official: SGD 0.1, momentum 0.9, wd 5e-4, StepLR(35, 0.1),
    100 epochs, batch 128, crop + flip). Returns a trained copy; DDP-aware."""
    cfg.validate()
    check_dataset(x, y)
    rank, world = _dist()
    g = torch.Generator().manual_seed(cfg.seed + rank)
    net = copy.deepcopy(model).to(cfg.device).train()
    ddp = _wrap_ddp(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.clean_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    spe = max(1, -(-len(x) // (cfg.batch_size * world)))
    sched = _scheduler(opt, cfg.clean_scheduler, cfg.clean_epochs * spe, spe, cfg.step_size_epochs, cfg.gamma)
    for epoch in progress(range(cfg.clean_epochs), desc="clean", disable=None if rank == 0 else True):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        order = order[rank::world]
        for s in range(spe):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx) == 0:
                continue
            xb = random_crop_flip(x[idx], cfg.pad, cfg.flip, g)
            loss = F.cross_entropy(ddp(xb.to(cfg.device)), y[idx].to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@dataclass
class PoisonRun:
    """What the poisoning loop returns: the selected model and its evaluation history."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    selected_step: int | None = None
    best_step: int | None = None
    best_state: dict[str, torch.Tensor] | None = None


def poison_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, victim: int, target: int,
                 triggers, partitioner, cfg: LotusConfig,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 extra_negatives: NegativesFn | None = None,
                 state_path: str | Path | None = None, save_every: int = 500,
                 resume: bool = False) -> PoisonRun:
    """Fine-tune ``model`` (a copy) with poisoned batches (LOTUS L8).

    Each step takes ``b`` other-class samples (an epoch is one pass over them) and ``2v``
    victims, ``v = max(⌊b/(C-1)⌋, min_victim)``. Every ``eval_every`` steps ``evaluate(model)``
    (returning at least ``"asr"``) is logged; the returned model is the *final* one of the
    official code: the last evaluation with ASR ≥ ``asr_bound`` (``AttackFailedError`` if none).
    Without ``evaluate`` the last model is returned.

    Under ``torch.distributed`` (torchrun / accelerate launch) each rank takes its shard of every
    epoch's order and draws its own victims; DDP averages the gradients. ``state_path`` saves a
    resumable state every ``save_every`` steps (``resume=True`` continues from it, bit-exact).
    """
    num_classes = check_attack_inputs(x, y, victim, target, cfg)
    rank, world = _dist()
    vic = (y == victim).nonzero().squeeze(1)
    oth = (y != victim).nonzero().squeeze(1)
    v = victims_per_step(cfg, num_classes)
    spe = max(1, -(-len(oth) // (cfg.batch_size * world)))
    total = cfg.steps if cfg.steps is not None else cfg.epochs * spe
    eval_every = cfg.eval_every or spe
    net = copy.deepcopy(model).to(cfg.device).train()
    ddp = _wrap_ddp(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg.scheduler, total, spe, cfg.step_size_epochs, cfg.gamma)
    g = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    run = PoisonRun(net)
    final_state = best_state = None
    best_asr = -1.0
    start = 0
    if resume and state_path is not None and Path(state_path).is_file():
        st = load_training_state(state_path, model=net, optimizer=opt, scheduler=sched)
        start = st["step"]
        g.set_state(st["extra"]["generator"])
        run.history = list(st["extra"].get("history", []))
    order = None
    for step in progress(range(start, total), desc="poison", initial=start, total=total,
                         disable=None if rank == 0 else True):
        epoch, pos = divmod(step, spe)
        if order is None or pos == 0:
            perm = torch.randperm(len(oth), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            order = oth[perm][rank::world]
        idx = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        if len(idx) == 0:
            idx = order[:cfg.batch_size]
        vpick = vic[torch.randperm(len(vic), generator=g)[:2 * v]]
        xb, yb = poison_batch(x[idx], y[idx], x[vpick], partitioner, triggers, cfg, victim=victim,
                              target=target, generator=g, extra_negatives=extra_negatives)
        loss = lotus_loss(ddp(xb.to(cfg.device)), yb.to(cfg.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if evaluate is not None and (done % eval_every == 0 or done == total):
            rec = {"step": done, "loss": loss.item(), **evaluate(net)}
            run.history.append(rec)
            net.train()
            if rec["asr"] >= cfg.asr_bound:
                final_state, run.selected_step = copy.deepcopy(net.state_dict()), done
                if rec["asr"] > best_asr:
                    best_asr, run.best_step = rec["asr"], done
                    best_state = final_state
        if state_path is not None and rank == 0 and (done % save_every == 0 or done == total):
            save_training_state(state_path, model=net, optimizer=opt, scheduler=sched, step=done,
                                extra={"generator": g.get_state(), "history": run.history})
    if evaluate is not None:
        if final_state is None:
            raise AttackFailedError(
                f"no evaluation reached ASR >= asr_bound={cfg.asr_bound} in {total} steps "
                f"(last: {run.history[-1] if run.history else None})", run.history, net.eval())
        net.load_state_dict(final_state)
    run.best_state = best_state
    run.model = net.eval()
    return run


# --- the attack ------------------------------------------------------------------------------

@dataclass
class LotusArtifacts:
    """A fitted attack: the backdoored model, the secret partitioner, the triggers, the log."""

    model: nn.Module
    partitioner: Any
    triggers: Any
    history: list[dict[str, Any]]
    victim: int
    target: int
    cluster_agreement: float | None = None
    selected_step: int | None = None


class LotusAttack:
    """LOTUS: a label-specific backdoor with sub-partitioned triggers and trigger focusing.

    Parameters
    ----------
    config : LotusConfig
        Hyper-parameters (official full-scale defaults; ``LotusConfig.cpu()`` for CPU).

    Examples
    --------
    >>> from cvpr24.lotus import LotusAttack, LotusConfig, synthetic_shapes, build_model
    >>> d = synthetic_shapes(30, seed=0)
    >>> cfg = LotusConfig.cpu(steps=2, surrogate_epochs=1, batch_size=32)
    >>> art = LotusAttack(cfg).fit(build_model("small_cnn"), d.x, d.y, victim=0, target=9)
    >>> art.partitioner.predict(d.x[:3]).shape
    torch.Size([3])
    """

    def __init__(self, config: LotusConfig | None = None):
        self.config = config

    def fit_partitioner(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int,
                        features=None) -> SurrogatePartitioner | ConstantPartitioner:
        """Cluster the training victims (L6) and train the C + K surrogate (L7)."""
        cfg = self.config or LotusConfig()
        if cfg.n_partitions == 1:
            return ConstantPartitioner()
        xv = x[y == victim]
        kw = {} if features is None else {"features": features}
        clusters = ClusterPartitioner(cfg.n_partitions, cfg.cluster, cfg.cluster_seed, cfg.n_init, **kw).fit(xv)
        sur = SurrogatePartitioner(model, int(y.max()) + 1, cfg.n_partitions, epochs=cfg.surrogate_epochs,
                                   lr=cfg.surrogate_lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                                   scheduler=cfg.surrogate_scheduler, seed=cfg.seed,
                                   compat_batch_aug=cfg.compat_batch_aug, device=cfg.device)
        sur.fit(x, y, victim, clusters.labels_)
        sur.clusters_ = clusters
        return sur

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, victim: int, target: int, *,
            partitioner=None, eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
            features=None, state_path: str | Path | None = None, resume: bool = False) -> LotusArtifacts:
        """Poison the clean ``model`` (not modified) for ``victim -> target``.

        1. check inputs; 2. build the K patch triggers; 3. fit the partitioner (unless given);
        4. poison with trigger focusing, selecting on ``eval_data`` when given.
        """
        cfg = self.config or LotusConfig()
        check_attack_inputs(x, y, victim, target, cfg)
        triggers = TriggerSet(cfg.n_partitions, tuple(x.shape[-2:]))
        if partitioner is None:
            partitioner = self.fit_partitioner(model, x, y, victim, features)
        evaluate = None
        if eval_data is not None:
            evaluate = make_probe(eval_data[0], eval_data[1], victim, target, triggers, partitioner)
        run = poison_train(model, x, y, victim=victim, target=target, triggers=triggers,
                           partitioner=partitioner, cfg=cfg, evaluate=evaluate,
                           state_path=state_path, resume=resume)
        return LotusArtifacts(run.model, partitioner, triggers, run.history, victim, target,
                              getattr(partitioner, "agreement_", None), run.selected_step)


def make_probe(x: torch.Tensor, y: torch.Tensor, victim: int, target: int, triggers,
               partitioner) -> Callable[[nn.Module], dict[str, float]]:
    """Per-evaluation probe: BA, ASR and ASR_par on held-out data (partitions computed once)."""
    from cvpr24.lotus.metrics import asr_par, attack_success_rate, benign_accuracy

    xv = x[y == victim]
    p = partitioner.predict(xv)

    def probe(model: nn.Module) -> dict[str, float]:
        par, _ = asr_par(model, xv, p, triggers, target)
        return {"ba": benign_accuracy(model, x, y),
                "asr": attack_success_rate(model, xv, p, triggers, target), "asr_par": par}

    return probe
