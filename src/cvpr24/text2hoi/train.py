"""Training and sampling for Text2HOI: contact CVAE + PointNet, length CVAE, TextHOM, refiner.

Each stage is a function ``train_*(model, batches, steps, ...)`` over a :class:`HOIBatch`; the
reproduction and ``cvpr24 train text2hoi`` call them in order. ``Text2HOI`` holds the trained
networks and samples motions (§ inference pipeline in the docs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvpr24.common import load_training_state, save_training_state
from cvpr24.text2hoi.diffusion import GaussianDiffusion
from cvpr24.text2hoi.geometry import (
    CONTACT_THRESHOLD,
    gather_points,
    nearest_points,
    pc_normalize,
    transform_points,
)
from cvpr24.text2hoi.losses import (
    contact_loss,
    contact_vae_loss,
    distance_map_loss,
    gaussian_kl,
    masked_mse,
    penetration_loss,
    relative_orientation_loss,
)
from cvpr24.text2hoi.mano import ManoLayer, vertex_normals
from cvpr24.text2hoi.model import (
    HAND_DIM,
    ContactCVAE,
    HandRefiner,
    LengthCVAE,
    PointNetfeat,
    Text2HOIConfig,
    TextHOM,
    check_motion,
)
from cvpr24.text2hoi.rotations import axis_angle_to_rotmat


@dataclass
class HOIBatch:
    """Tensors of a batch. Hands (B, T, 99), object (B, T, 9), masks (B, T), points (B, N, 3)."""

    x_l: torch.Tensor
    x_r: torch.Tensor
    x_o: torch.Tensor
    mask_l: torch.Tensor
    mask_r: torch.Tensor
    mask_o: torch.Tensor
    points: torch.Tensor  # canonical object points
    contact: torch.Tensor  # (B, N) GT contact map c
    text: torch.Tensor  # (B, D_text)
    length: torch.Tensor  # (B,) ℓ = n_frames / N_max
    action: torch.Tensor  # (B,) long

    def index(self, idx: torch.Tensor) -> HOIBatch:
        return HOIBatch(**{k: v[idx] for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return self.x_l.shape[0]


def check_batch(b: HOIBatch, cfg: Text2HOIConfig) -> None:
    """Shapes and finiteness of a batch, with the field's name in the error."""
    check_motion(b.x_l, HAND_DIM, "x_lhand", cfg.max_frames)
    check_motion(b.x_r, HAND_DIM, "x_rhand", cfg.max_frames)
    check_motion(b.x_o, cfg.obj_dim, "x_obj", cfg.max_frames)
    if b.points.ndim != 3 or b.points.shape[1:] != (cfg.n_points, 3):
        raise ValueError(f"obj_points must have shape (B, {cfg.n_points}, 3), got {tuple(b.points.shape)}")


def collate(samples: Sequence, text_features: dict[str, torch.Tensor]) -> HOIBatch:
    """Stack ToyHOI samples (or any with the same fields) into a :class:`HOIBatch`."""
    t = samples[0].x_lhand.shape[0]
    ones = torch.ones(len(samples), t)
    return HOIBatch(
        x_l=torch.stack([s.x_lhand for s in samples]),
        x_r=torch.stack([s.x_rhand for s in samples]),
        x_o=torch.stack([s.x_obj for s in samples]),
        mask_l=ones * torch.tensor([float(s.is_lhand) for s in samples]).unsqueeze(1),
        mask_r=ones * torch.tensor([float(s.is_rhand) for s in samples]).unsqueeze(1),
        mask_o=ones.clone(),
        points=torch.stack([s.obj.points for s in samples]),
        contact=torch.stack([s.contact for s in samples]),
        text=torch.stack([text_features[s.text] for s in samples]),
        length=torch.ones(len(samples)),
        action=torch.tensor([s.action for s in samples]),
    )


class HandModels(torch.nn.Module):
    """The two MANO layers (β = 0), used for forward kinematics in the losses."""

    def __init__(self, left: ManoLayer, right: ManoLayer) -> None:
        super().__init__()
        self.left, self.right = left, right

    def joints(self, x_l: torch.Tensor, x_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.left.forward_rot6d(x_l, joints_only=True)["joints_w_tip"],
            self.right.forward_rot6d(x_r, joints_only=True)["joints_w_tip"],
        )


class MotionNormalizer(nn.Module):
    """Per-dimension standardisation of the diffused features (N1) [X], MDM's convention.

    The official code diffuses raw units (metres, 6D entries); the identity normaliser (the
    default) reproduces that and is what official weights need. :meth:`fit` takes the mean and
    standard deviation of each stream's dimensions over the valid training frames, so that the
    translations (a few cm of spread) weigh in L_simple (T11) as much as the rotations do.
    """

    def __init__(self, obj_dim: int = 9) -> None:
        super().__init__()
        for k, d in (("l", HAND_DIM), ("r", HAND_DIM), ("o", obj_dim)):
            self.register_buffer(f"mean_{k}", torch.zeros(d))
            self.register_buffer(f"std_{k}", torch.ones(d))

    @classmethod
    def fit(cls, data: HOIBatch, min_std: float = 1e-2) -> MotionNormalizer:
        """Statistics over valid frames; ``min_std`` floors near-constant dimensions."""
        out = cls(data.x_o.shape[-1])
        for k in "lro":
            valid = getattr(data, f"x_{k}")[getattr(data, f"mask_{k}") > 0]  # (n, D)
            if len(valid) > 1:
                getattr(out, f"mean_{k}").copy_(valid.mean(0))
                getattr(out, f"std_{k}").copy_(valid.std(0).clamp_min(min_std))
        return out

    def normalize(self, x_l: torch.Tensor, x_r: torch.Tensor, x_o: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple((x - getattr(self, f"mean_{k}")) / getattr(self, f"std_{k}") for x, k in zip((x_l, x_r, x_o), "lro", strict=True))

    def denormalize(self, x_l: torch.Tensor, x_r: torch.Tensor, x_o: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x * getattr(self, f"std_{k}") + getattr(self, f"mean_{k}") for x, k in zip((x_l, x_r, x_o), "lro", strict=True))


def object_features(pointnet: PointNetfeat, points: torch.Tensor) -> dict[str, torch.Tensor]:
    """(T4) normalisation and frozen PointNet features of canonical points (B, N, 3)."""
    p_norm, centroid, scale = pc_normalize(points)
    glob, per_point = pointnet.global_and_points(p_norm)
    return {"p_norm": p_norm, "centroid": centroid, "scale": scale, "global": glob, "per_point": per_point}


def obj_cond(feats: dict[str, torch.Tensor], contact: torch.Tensor | None) -> torch.Tensor:
    """o_feat = [global ‖ c ‖ s_obj ‖ centroid] (T10); without c for the baseline."""
    parts = [feats["global"]] + ([contact] if contact is not None else []) + [feats["scale"][:, None], feats["centroid"]]
    return torch.cat(parts, -1)


def _augment(points: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Scale U[0.8, 1.2] and rotation by integer degrees in [−15, 15) about each axis, R_z R_y R_x."""
    b = points.shape[0]
    s = 0.8 + 0.4 * torch.rand(b, 1, 1, generator=g)
    deg = torch.randint(-15, 15, (b, 3), generator=g).float() * torch.pi / 180
    z = torch.zeros(b)
    rx = axis_angle_to_rotmat(torch.stack([deg[:, 0], z, z], -1))
    ry = axis_angle_to_rotmat(torch.stack([z, deg[:, 1], z], -1))
    rz = axis_angle_to_rotmat(torch.stack([z, z, deg[:, 2]], -1))
    return s * (points @ (rz @ ry @ rx).transpose(1, 2))


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """Two seeds for one step of one rank: the step's noise generator and the global RNG
    (dropout). Every draw depends only on (seed, rank, step), so a resumed run continues
    exactly where an uninterrupted one would be."""
    a, b = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    return int(a), int(b)


def batch_indices(n: int, batch_size: int, seed: int, rank: int, step: int) -> torch.Tensor:
    """The ``step``-th batch of a per-epoch shuffle (drop_last), seeded by (seed, rank, epoch)."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, epoch, 1]).generate_state(1)[0])))
    return perm[i * batch_size : (i + 1) * batch_size]


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def fit(
    module: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, dict]], n: int,
    steps: int, batch_size: int, lr: float, seed: int = 0, state_path: str | os.PathLike | None = None,
    save_every: int = 100, scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
    log: Callable[[int, dict], None] | None = None,
) -> None:
    """AdamW on ``module``'s trainable parameters for ``steps`` steps of ``loss_fn(batch_idx, g)``.

    Resumable: with ``state_path`` the model, optimizer, scheduler and step are saved every
    ``save_every`` steps and at the end, and a run finds its place again from that file.
    Data parallel under ``torch.distributed`` (``torchrun``): rank 0's weights are broadcast
    first, each rank draws its own batch and noise, gradients are averaged, BatchNorm statistics
    follow rank 0 (as DDP's ``broadcast_buffers``), and rank 0 writes the state.
    The global RNG (dropout) is seeded per step inside ``fork_rng`` and left as it was found.
    """
    world, rank = _world()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = scheduler(opt) if scheduler is not None else None
    start = 0
    if state_path is not None and Path(state_path).is_file():
        start = load_training_state(state_path, model=module, optimizer=opt, scheduler=sched, restore_rng=False)["step"]
    if world > 1:
        for t in module.state_dict().values():
            torch.distributed.broadcast(t, src=0)
    bs = min(batch_size, n)
    module.train()
    with torch.random.fork_rng():
        for step in range(start, steps):
            noise_seed, global_seed = step_seeds(seed, rank, step)
            torch.manual_seed(global_seed)
            loss, parts = loss_fn(batch_indices(n, bs, seed, rank, step), torch.Generator().manual_seed(noise_seed))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            opt.step()
            if sched is not None:
                sched.step()
            if world > 1:
                for buf in module.buffers():
                    torch.distributed.broadcast(buf, src=0)
            if log:
                log(step, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()})
            done = step + 1
            if state_path is not None and rank == 0 and (done % save_every == 0 or done == steps):
                save_training_state(state_path, model=module, optimizer=opt, scheduler=sched, step=done)
    module.eval()


def train_contact(
    pointnet: PointNetfeat, cvae: ContactCVAE, data: HOIBatch, steps: int, batch_size: int = 32, lr: float = 1e-3,
    seed: int = 0, log: Callable[[int, dict], None] | None = None, **fit_kw,
) -> None:
    """Contact CVAE and PointNet trained jointly (T8), with the official augmentation."""

    def loss_fn(idx, g):
        b = data.index(idx)
        f = object_features(pointnet, _augment(b.points, g))
        cond = cvae.condition(f["scale"], f["per_point"], b.text)
        pred, mu, logvar = cvae(f["p_norm"], b.contact, cond, generator=g)
        return contact_vae_loss(pred, b.contact, mu, logvar)

    both = nn.ModuleDict({"pointnet": pointnet, "contact_vae": cvae})
    fit(both, loss_fn, len(data), steps, batch_size, lr, seed, log=log, **fit_kw)


def train_length(cvae: LengthCVAE, data: HOIBatch, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, **fit_kw) -> None:
    """Length CVAE: MSE_sum + KL_sum on ℓ ×U[0.95, 1.05] clipped at 1."""

    def loss_fn(idx, g):
        b = data.index(idx)
        target = (b.length * (0.95 + 0.1 * torch.rand(len(b), generator=g))).clamp(max=1)
        pred, mu, logvar = cvae(target, b.text, generator=g)
        mse, kl = ((pred - target) ** 2).sum(), gaussian_kl(mu, logvar)
        return mse + kl, {"mse": mse, "kl": kl}

    fit(cvae, loss_fn, len(data), steps, batch_size, lr, seed, **fit_kw)


def motion_losses(
    hands: HandModels, b: HOIBatch, x0_hat: tuple, geometric: bool, normalizer: MotionNormalizer | None = None,
    rot_convention: str = "Rp",
) -> dict[str, torch.Tensor]:
    """(T11-T14) L_simple for each of l, r, o (in the normalised space (N1) when a normalizer is
    given), plus L_dm and L_ro through forward kinematics. ``x0_hat`` is in raw units."""
    xl, xr, xo = x0_hat
    pred, target = x0_hat, (b.x_l, b.x_r, b.x_o)
    if normalizer is not None:
        pred, target = normalizer.normalize(*pred), normalizer.normalize(*target)
    masks = (b.mask_l, b.mask_r, b.mask_o)
    out = {"simple": sum(masked_mse(p, x, m) for p, x, m in zip(pred, target, masks, strict=True))}
    if not geometric:
        return out
    pts_hat = transform_points(b.points, xo, rot_convention)
    pts_gt = transform_points(b.points, b.x_o, rot_convention)
    jl_hat, jr_hat = hands.joints(xl, xr)
    with torch.no_grad():
        jl, jr = hands.joints(b.x_l, b.x_r)
        dl = contact_labels_batched(pts_gt, jl, b.mask_l)
        dr = contact_labels_batched(pts_gt, jr, b.mask_r)
    out["dm"] = distance_map_loss(pts_hat, jl_hat, dl) + distance_map_loss(pts_hat, jr_hat, dr)
    out["ro"] = relative_orientation_loss(xl, xo, b.x_l, b.x_o, b.mask_l) + relative_orientation_loss(
        xr, xo, b.x_r, b.x_o, b.mask_r
    )
    return out


def contact_labels_batched(pts: torch.Tensor, joints: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """D* (T2) for a batch: pts (B, T, N, 3), joints (B, T, 21, 3), mask (B, T) -> (B, T, N, 21)."""
    d = torch.cdist(pts, joints)
    hit = (d < CONTACT_THRESHOLD) & mask.bool()[..., None, None]
    return torch.where(hit, d, torch.zeros_like(d))


def train_motion(
    model: TextHOM, diffusion: GaussianDiffusion, pointnet: PointNetfeat, hands: HandModels, data: HOIBatch,
    steps: int, geometric: bool, batch_size: int = 32, lr: float = 1e-4, seed: int = 0,
    lambda_dm: float = 1.0, lambda_ro: float = 1.0, normalizer: MotionNormalizer | None = None,
    log: Callable[[int, dict], None] | None = None, **fit_kw,
) -> None:
    """TextHOM with x̂_0 prediction (T14); GT contact maps condition it during training (faithful).

    With ``normalizer`` the model diffuses and predicts standardised features (N1) [X]; the
    geometric losses see them back in metres."""
    check_batch(data, model.cfg)
    with torch.no_grad():
        feats = object_features(pointnet, data.points)
    o_feat = obj_cond(feats, data.contact if model.cfg.use_contact_feat else None)
    norm = normalizer or MotionNormalizer(model.cfg.obj_dim)

    def loss_fn(idx, g):
        b = data.index(idx)
        t = torch.randint(0, diffusion.num_steps, (len(b),), generator=g)
        x0 = norm.normalize(b.x_l, b.x_r, b.x_o)
        noisy = [diffusion.q_sample(x, t, torch.randn(x.shape, generator=g)) for x in x0]
        x0_hat = norm.denormalize(*model(*noisy, t, b.text, o_feat[idx], b.mask_l, b.mask_r, b.mask_o))
        parts = motion_losses(hands, b, x0_hat, geometric, normalizer)
        loss = parts["simple"] + (lambda_dm * parts["dm"] + lambda_ro * parts["ro"] if geometric else 0)
        return loss, parts

    fit(model, loss_fn, len(data), steps, batch_size, lr, seed, log=log, **fit_kw)


def refiner_input(x_h: torch.Tensor, joints: torch.Tensor, pts: torch.Tensor, contact: torch.Tensor) -> torch.Tensor:
    """(T16) [x̂_h ‖ Ĵ ‖ A = exp(−50 (Ĵ − p_nn(Ĵ))²) ‖ ‖R̂_o p_i + τ̂_o‖ ‖ ĉ] per hand and frame."""
    _, idx = nearest_points(joints, pts)
    a = torch.exp(-50 * (joints - gather_points(pts, idx)) ** 2)
    b, t = x_h.shape[:2]
    return torch.cat(
        [x_h, joints.flatten(-2), a.flatten(-2), pts.norm(dim=-1), contact[:, None].expand(b, t, -1)], -1
    )


def refine(refiner: HandRefiner, hands: HandModels, xl, xr, xo, points, contact, mask_l, mask_r):
    pts = transform_points(points, xo)
    jl, jr = hands.joints(xl, xr)
    return refiner(
        refiner_input(xl, jl, pts, contact), refiner_input(xr, jr, pts, contact), xl, xr, mask_l, mask_r
    ), (jl, jr, pts)


def refiner_losses(
    hands: HandModels, b: HOIBatch, refined, coarse_joints, pts, penet_frames: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """(T20) L_ref parts: L_simple, L_penet (T18), L_contact (T19).

    ``penet_frames`` (k,) restricts L_penet to those frames (a CPU-scale saving [X]; None = all).
    """
    xl, xr = refined
    out = {"simple": masked_mse(xl, b.x_l, b.mask_l) + masked_mse(xr, b.x_r, b.mask_r)}
    penet, cont = 0.0, 0.0
    for layer, x, jc, m in ((hands.left, xl, coarse_joints[0], b.mask_l), (hands.right, xr, coarse_joints[1], b.mask_r)):
        cont = cont + contact_loss(layer.forward_rot6d(x, joints_only=True)["joints_w_tip"], jc, pts, m)
        f = slice(None) if penet_frames is None else penet_frames
        verts = layer.forward_rot6d(x[:, f])["vertices"]
        n = vertex_normals(verts, layer.faces)
        penet = penet + penetration_loss(pts[:, f], verts, n, m[:, f])
    out["penet"], out["contact"] = penet, cont
    return out


def train_refiner(
    refiner: HandRefiner, model: TextHOM, diffusion: GaussianDiffusion, pointnet: PointNetfeat, hands: HandModels,
    data: HOIBatch, steps: int, batch_size: int = 32, lr: float = 1e-4, seed: int = 0,
    penet_frames: int | None = None, normalizer: MotionNormalizer | None = None,
    log: Callable[[int, dict], None] | None = None, **fit_kw,
) -> None:
    """Refiner on one-step x̂_0 of the frozen TextHOM at uniform t (faithful), GT contact maps (T20);
    ``normalizer`` is the one TextHOM was trained with."""
    with torch.no_grad():
        feats = object_features(pointnet, data.points)
    o_feat = obj_cond(feats, data.contact if model.cfg.use_contact_feat else None)
    norm = normalizer or MotionNormalizer(model.cfg.obj_dim)
    model.eval()

    def loss_fn(idx, g):
        b = data.index(idx)
        with torch.no_grad():
            t = torch.randint(0, diffusion.num_steps, (len(b),), generator=g)
            x0 = norm.normalize(b.x_l, b.x_r, b.x_o)
            noisy = [diffusion.q_sample(x, t, torch.randn(x.shape, generator=g)) for x in x0]
            xl, xr, xo = norm.denormalize(*model(*noisy, t, b.text, o_feat[idx], b.mask_l, b.mask_r, b.mask_o))
        refined, (jl, jr, pts) = refine(refiner, hands, xl, xr, xo, b.points, b.contact, b.mask_l, b.mask_r)
        frames = None if penet_frames is None else torch.randperm(b.x_l.shape[1], generator=g)[:penet_frames]
        parts = refiner_losses(hands, b, refined, (jl, jr), pts, frames)
        return parts["simple"] + parts["penet"] + 5 * parts["contact"], parts

    fit(refiner, loss_fn, len(data), steps, batch_size, lr, seed, log=log, **fit_kw)


@dataclass
class Text2HOI:
    """The trained networks and the sampling pipeline (contact map -> motion -> refinement)."""

    cfg: Text2HOIConfig
    pointnet: PointNetfeat
    contact_vae: ContactCVAE
    length_vae: LengthCVAE
    texthom: TextHOM
    refiner: HandRefiner | None
    hands: HandModels
    normalizer: MotionNormalizer | None = None  # None: raw units, as the official weights

    @classmethod
    def build(cls, cfg: Text2HOIConfig, hands: HandModels, seed: int, with_refiner: bool = True) -> Text2HOI:
        with torch.random.fork_rng():  # seeded initialisation; the global RNG is left as it was
            torch.manual_seed(seed)
            pn = PointNetfeat(3, cfg.pointnet_widths, cfg.stn_fc, global_feat=False)
            nets = (ContactCVAE(cfg), LengthCVAE(cfg), TextHOM(cfg), HandRefiner(cfg) if with_refiner else None)
        return cls(cfg, pn, *nets, hands, MotionNormalizer(cfg.obj_dim))

    NETWORKS = ("pointnet", "contact_vae", "length_vae", "texthom", "refiner", "normalizer")

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.NETWORKS:
            m = getattr(self, name)
            if m is not None:
                out.update({f"{name}.{k}": v for k, v in m.state_dict().items() if not k.endswith(".pe")})
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for name in self.NETWORKS:
            m = getattr(self, name)
            if m is None:
                continue
            part = {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")}
            missing, unexpected = m.load_state_dict(part, strict=False)
            if unexpected or [k for k in missing if not k.endswith(".pe")]:
                raise ValueError(f"checkpoint does not match {name}: missing {missing}, unexpected {unexpected}")
            m.eval()

    @torch.no_grad()
    def sample(
        self, b: HOIBatch, generator: torch.Generator, num_inference_steps: int | None = None,
        contact: torch.Tensor | None = None, use_refiner: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Motions for a batch's texts, objects and hand masks.

        1. object features; 2. ĉ from the contact CVAE (T7) unless ``contact`` is given (oracle);
        3. reverse diffusion (T15, or DDIM with fewer steps), in the normaliser's space (N1), back to
        raw units; 4. the refiner (T17).
        """
        feats = object_features(self.pointnet, b.points)
        if contact is None:
            cond = self.contact_vae.condition(feats["scale"], feats["per_point"], b.text)
            contact = self.contact_vae.sample(cond, generator)
        o_feat = obj_cond(feats, contact if self.cfg.use_contact_feat else None)
        shapes = [tuple(b.x_l.shape), tuple(b.x_r.shape), tuple(b.x_o.shape)]
        xs = GaussianDiffusion(self.cfg.diffusion_steps).sample(
            lambda xs, t: self.texthom(*xs, t, b.text, o_feat, b.mask_l, b.mask_r, b.mask_o),
            shapes, num_inference_steps, generator,
        )
        xl, xr, xo = self.normalizer.denormalize(*xs) if self.normalizer is not None else xs
        if use_refiner and self.refiner is not None:
            (xl, xr), _ = refine(self.refiner, self.hands, xl, xr, xo, b.points, contact, b.mask_l, b.mask_r)
        return {"x_l": xl, "x_r": xr, "x_o": xo, "contact": contact}
