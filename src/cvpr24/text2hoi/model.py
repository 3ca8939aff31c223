"""Text2HOI networks: PointNet, the contact CVAE, the length CVAE, TextHOM and the refiner.

Attribute names follow the official state-dict keys, so official checkpoints map onto these
modules almost one to one (``cvpr24.text2hoi.io``). Equation labels (T4..T17) are defined in
``docs/text2hoi.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

HAND_DIM = 99  # τ (3) + 16 × 6D rotations
OBJ_DIM = 9  # τ_o (3) + 6D rotation; 10 with the ARCTIC articulation angle
PE_LEN = 5000


@dataclass
class Text2HOIConfig:
    """Sizes of every network; the defaults are the official full-scale ones."""

    n_points: int = 1024
    pointnet_widths: tuple[int, int, int] = (64, 128, 1024)
    stn_fc: tuple[int, int] = (512, 256)
    text_dim: int = 512  # CLIP ViT-B/32
    latent_dim: int = 512
    ff_dim: int = 1024
    num_layers: int = 8
    num_heads: int = 4
    dropout: float = 0.1
    max_frames: int = 150
    obj_dim: int = OBJ_DIM
    cvae_latent: int = 64
    cvae_hidden: tuple[int, int, int] = (512, 256, 128)
    len_hidden: int = 512
    diffusion_steps: int = 1000
    cond_mask_prob: float = 0.1
    use_contact_feat: bool = True

    @classmethod
    def cpu(cls) -> Text2HOIConfig:
        """The ToyHOI sizes: d 64, 2 layers, FF 128, 256 points, PointNet widths ÷ 4, 40 frames."""
        return cls(
            n_points=256, pointnet_widths=(16, 32, 256), stn_fc=(128, 64), text_dim=384,
            latent_dim=64, ff_dim=128, num_layers=2, max_frames=40, cvae_latent=16,
            cvae_hidden=(128, 64, 32), len_hidden=128, diffusion_steps=100,
        )

    @property
    def global_dim(self) -> int:
        return self.pointnet_widths[2]

    @property
    def point_feat_dim(self) -> int:
        return self.pointnet_widths[2] + self.pointnet_widths[0]

    @property
    def obj_feat_dim(self) -> int:
        """[f_pt global ‖ contact map c (if used) ‖ s_obj ‖ centroid] (T10)."""
        return self.global_dim + (self.n_points if self.use_contact_feat else 0) + 4

    @property
    def refiner_in_dim(self) -> int:
        """[x̂_h (99) ‖ Ĵ (63) ‖ A (63) ‖ point distances (N) ‖ ĉ (N)] (T16)."""
        return HAND_DIM + 63 + 63 + 2 * self.n_points


# ------------------------------------------------------------------------------------------
# PointNet (f_pt)


def _conv_bn(cin: int, cout: int) -> tuple[nn.Conv1d, nn.BatchNorm1d]:
    return nn.Conv1d(cin, cout, 1), nn.BatchNorm1d(cout)


class STNkd(nn.Module):
    """Input transform: a PointNet regressing a k×k matrix, plus the identity."""

    def __init__(self, k: int, widths=(64, 128, 1024), fc=(512, 256)) -> None:
        super().__init__()
        self.k = k
        self.conv1, self.bn1 = _conv_bn(k, widths[0])
        self.conv2, self.bn2 = _conv_bn(widths[0], widths[1])
        self.conv3, self.bn3 = _conv_bn(widths[1], widths[2])
        self.fc1, self.bn4 = nn.Linear(widths[2], fc[0]), nn.BatchNorm1d(fc[0])
        self.fc2, self.bn5 = nn.Linear(fc[0], fc[1]), nn.BatchNorm1d(fc[1])
        self.fc3 = nn.Linear(fc[1], k * k)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, k, N)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x))).amax(-1)
        x = self.relu(self.bn4(self.fc1(x)))
        x = self.relu(self.bn5(self.fc2(x)))
        eye = torch.eye(self.k, dtype=x.dtype, device=x.device).flatten()
        return (self.fc3(x) + eye).view(-1, self.k, self.k)


class PointNetfeat(nn.Module):
    """PointNet feature extractor f_pt (input transform, no feature transform).

    ``global_feat=True`` returns (B, C) max-pooled features; ``False`` returns per-point
    (B, N, C + 64) = [global repeated ‖ per-point 64] (1088 at full scale).
    """

    def __init__(self, in_dim: int = 3, widths=(64, 128, 1024), stn_fc=(512, 256), global_feat: bool = True) -> None:
        super().__init__()
        self.stn = STNkd(in_dim, widths, stn_fc)
        self.conv1, self.bn1 = _conv_bn(in_dim, widths[0])
        self.conv2, self.bn2 = _conv_bn(widths[0], widths[1])
        self.conv3, self.bn3 = _conv_bn(widths[1], widths[2])
        self.global_feat = global_feat
        self.relu = nn.ReLU()

    def forward(self, pts: torch.Tensor) -> torch.Tensor:  # pts: (B, N, in_dim)
        x = pts.transpose(1, 2)
        trans = self.stn(x)
        x = torch.bmm(trans.transpose(1, 2), x)  # (B, k, N): points times the learned transform
        point = self.relu(self.bn1(self.conv1(x)))  # (B, 64, N)
        x = self.relu(self.bn2(self.conv2(point)))
        glob = self.bn3(self.conv3(x)).amax(-1)  # (B, C): no ReLU before the max-pool
        if self.global_feat:
            return glob
        n = pts.shape[1]
        return torch.cat([glob.unsqueeze(1).expand(-1, n, -1), point.transpose(1, 2)], -1)

    def global_and_points(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs from one pass: (B, C) and (B, N, C + 64)."""
        was, self.global_feat = self.global_feat, False
        try:
            per_point = self.forward(pts)
        finally:
            self.global_feat = was
        return per_point[:, 0, : -self.conv1.out_channels], per_point


# ------------------------------------------------------------------------------------------
# Contact CVAE (f_contact) and length CVAE (f_len)


class PointNetLatent(nn.Module):
    """CVAE encoder: PointNet global feature of [P_norm ‖ c] -> (μ, log σ²) (T5)."""

    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        h = cfg.cvae_hidden
        self.feat = PointNetfeat(4, cfg.pointnet_widths, cfg.stn_fc, global_feat=True)
        self.fc1, self.bn1 = nn.Linear(cfg.global_dim, h[0]), nn.BatchNorm1d(h[0])
        self.fc2, self.bn2 = nn.Linear(h[0], h[1]), nn.BatchNorm1d(h[1])
        self.fc3 = nn.Linear(h[1], 2 * cfg.cvae_latent)
        self.dropout = nn.Dropout(0.3)
        self.relu = nn.ReLU()

    def forward(self, pts_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.feat(pts_c)
        x = self.relu(self.bn1(self.fc1(x)))
        x = self.relu(self.bn2(self.dropout(self.fc2(x))))
        mu, logvar = self.fc3(x).chunk(2, dim=-1)
        return mu, logvar


class _MLPDecoder(nn.Module):
    """Linear+LeakyReLU(0.2) blocks, then a last Linear (keys ``MLP.i.0``) and a sigmoid."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        blocks = [nn.Sequential(nn.Linear(a, b), nn.LeakyReLU(0.2)) for a, b in zip(dims[:-2], dims[1:-1], strict=True)]
        blocks.append(nn.Sequential(nn.Linear(dims[-2], dims[-1])))
        self.MLP = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.MLP(x))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ ⊙ ε (T6)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


class ContactCVAE(nn.Module):
    """f_contact: per-point contact probability from text, geometry and scale (T5-T7).

    Condition per point i: [s_obj ‖ f_pt(P_norm)_i ‖ text]. The decoder is shared by all points
    and sees one latent z per object.
    """

    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_dim = 1 + cfg.point_feat_dim + cfg.text_dim
        self.encoder = PointNetLatent(cfg)
        self.decoder = _MLPDecoder([cfg.cvae_latent + self.cond_dim, *cfg.cvae_hidden, 1])

    def condition(self, scale: torch.Tensor, point_feat: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B,), (B, N, 1088), (B, D_text) -> (B, N, cond_dim)."""
        n = point_feat.shape[1]
        return torch.cat(
            [scale.reshape(-1, 1, 1).expand(-1, n, 1), point_feat, text.unsqueeze(1).expand(-1, n, -1)], -1
        )

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        zz = z.unsqueeze(1).expand(-1, cond.shape[1], -1)
        return self.decoder(torch.cat([zz, cond], -1)).squeeze(-1)  # (B, N) in (0, 1)

    def forward(
        self, pts_norm: torch.Tensor, contact: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: returns (ĉ (B, N), μ, log σ²)."""
        mu, logvar = self.encoder(torch.cat([pts_norm, contact.unsqueeze(-1)], -1))
        z = reparameterize(mu, logvar, generator)
        return self.decode(z, cond), mu, logvar

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None, threshold: float = 0.5) -> torch.Tensor:
        """Binary contact map ĉ_i = 1[dec(z, cond_i) > 0.5] with z ~ N(0, I) (T7)."""
        z = torch.randn(cond.shape[0], self.cfg.cvae_latent, generator=generator, dtype=cond.dtype, device=cond.device)
        return (self.decode(z, cond) > threshold).to(cond.dtype)


class _LenEncoder(nn.Module):
    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        self.MLP = nn.Sequential(nn.Linear(1 + cfg.text_dim, cfg.len_hidden), nn.ReLU())
        self.linear_mean_log = nn.Linear(cfg.len_hidden, 2 * cfg.cvae_latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.linear_mean_log(self.MLP(x)).chunk(2, dim=-1)
        return mu, logvar


class LengthCVAE(nn.Module):
    """f_len: sequence length ℓ = n_frames / N_max from text (a CVAE on one number)."""

    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _LenEncoder(cfg)
        self.decoder = _MLPDecoder([cfg.cvae_latent + cfg.text_dim, cfg.len_hidden, 1])

    def forward(self, length: torch.Tensor, text: torch.Tensor, generator: torch.Generator | None = None):
        mu, logvar = self.encoder(torch.cat([length.reshape(-1, 1), text], -1))
        z = reparameterize(mu, logvar, generator)
        return self.decoder(torch.cat([z, text], -1)).squeeze(-1), mu, logvar

    @torch.no_grad()
    def sample(self, text: torch.Tensor, generator: torch.Generator | None = None, min_frames: int = 16) -> torch.Tensor:
        """Frames ⌊N_max · dec(z, text)⌋, clamped to [min_frames, N_max] (an [X] guard against 0)."""
        z = torch.randn(text.shape[0], self.cfg.cvae_latent, generator=generator, dtype=text.dtype, device=text.device)
        ell = self.decoder(torch.cat([z, text], -1)).squeeze(-1)
        n = self.cfg.max_frames
        return torch.floor(n * ell).long().clamp(min(min_frames, n), n)


# ------------------------------------------------------------------------------------------
# TextHOM and the refiner


def sinusoidal_table(length: int, d: int) -> torch.Tensor:
    """The standard sinusoidal positional table, (length, 1, d)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.unsqueeze(1)


class PositionalEncoding(nn.Module):
    def __init__(self, d: int, dropout: float = 0.1, max_len: int = PE_LEN) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, d))
        self.dropout = nn.Dropout(dropout)


class TimestepEmbedder(nn.Module):
    """MLP_t(PE[t]) (T10): Linear-SiLU-Linear on the sinusoidal row of t."""

    def __init__(self, d: int, pos: PositionalEncoding) -> None:
        super().__init__()
        self.sequence_pos_encoder = pos  # shared: its ``pe`` appears twice in a state dict
        self.time_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, d)
        return self.time_embed(self.sequence_pos_encoder.pe[t, 0])


class _FC(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _encoder(cfg: Text2HOIConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.latent_dim, cfg.num_heads, cfg.ff_dim, cfg.dropout, activation="gelu")
    return nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)


def _instance_rows() -> tuple[int, int, int]:
    return 1, PE_LEN // 3, 2 * PE_LEN // 3  # left, right, object: 1, 1666, 3333


def check_motion(x: torch.Tensor, dim: int, name: str, max_frames: int) -> None:
    """Shape and finiteness checks with the argument's name in the message."""
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (B, T, {dim}), got {tuple(x.shape)}")
    if x.shape[1] > max_frames:
        raise ValueError(f"{name} has {x.shape[1]} frames, more than max_frames={max_frames}; crop it first")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


class TextHOM(nn.Module):
    """The x̂_0-predicting denoiser over [e, l_1, r_1, o_1, …, l_T, r_T, o_T] (T10).

    ``forward(x_l, x_r, x_o, t, text, obj_feat, mask_l, mask_r, mask_o)`` with hands (B, T, 99),
    object (B, T, obj_dim), masks (B, T) in {0, 1}; returns x̂_0 for each.
    """

    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.latent_dim
        self.init_fc_lhand = _FC(HAND_DIM, d)
        self.init_fc_rhand = _FC(HAND_DIM, d)
        self.init_fc_obj = _FC(cfg.obj_dim, d)
        self.sequence_pos_encoder = PositionalEncoding(d, cfg.dropout)
        self.sequence_hand_encoder = PositionalEncoding(d, cfg.dropout)
        self.embed_timestep = TimestepEmbedder(d, self.sequence_pos_encoder)
        self.embed_text = nn.Linear(cfg.text_dim, d)
        self.embed_obj = nn.Linear(cfg.obj_feat_dim, d)
        self.seqTransEncoder = _encoder(cfg)
        self.out_fc_lhand = _FC(2 * d, HAND_DIM)
        self.out_fc_rhand = _FC(2 * d, HAND_DIM)
        self.out_fc_obj = _FC(d, cfg.obj_dim)

    def mask_cond(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zero the whole condition of a sample with probability cond_mask_prob (training only)."""
        if not self.training or self.cfg.cond_mask_prob == 0:
            return c
        keep = torch.rand(c.shape[0], 1, generator=generator, device=c.device) >= self.cfg.cond_mask_prob
        return c * keep.to(c.dtype)

    def forward(
        self,
        x_l: torch.Tensor,
        x_r: torch.Tensor,
        x_o: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        obj_feat: torch.Tensor,
        mask_l: torch.Tensor,
        mask_r: torch.Tensor,
        mask_o: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x_l.shape
        pe = self.sequence_pos_encoder.pe[:, 0]  # (5000, d)
        # (T10) one condition token
        e = self.embed_timestep(t) + self.embed_text(self.mask_cond(text)) + self.embed_obj(self.mask_cond(obj_feat))
        e = e + pe[0]
        frame_pe = pe[1 : n + 1].unsqueeze(0)  # (1, T, d): frame f gets PE[f]
        il, ir, io = _instance_rows()
        tok_l = self.init_fc_lhand(x_l) + frame_pe
        tok_r = self.init_fc_rhand(x_r) + frame_pe
        tok_o = self.init_fc_obj(x_o) + frame_pe
        tok_l, tok_r, tok_o = (self.sequence_pos_encoder.dropout(x) for x in (tok_l, tok_r, tok_o))
        e = self.sequence_pos_encoder.dropout(e)
        hpe = self.sequence_hand_encoder.pe[:, 0]
        tok_l = self.sequence_hand_encoder.dropout(tok_l + hpe[il])
        tok_r = self.sequence_hand_encoder.dropout(tok_r + hpe[ir])
        tok_o = self.sequence_hand_encoder.dropout(tok_o + hpe[io])
        tokens = torch.stack([tok_l, tok_r, tok_o], 2).reshape(b, 3 * n, -1)  # l1 r1 o1 l2 ...
        seq = torch.cat([e.unsqueeze(1), tokens], 1)  # (B, 1 + 3T, d)
        valid = torch.stack([mask_l, mask_r, mask_o], 2).reshape(b, 3 * n) > 0
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=valid.device), ~valid], 1)
        h = self.seqTransEncoder(seq.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1)
        h = h[:, 1:].reshape(b, n, 3, -1)
        h_l, h_r, h_o = h.unbind(2)
        out_l = self.out_fc_lhand(torch.cat([h_l, h_o], -1))  # CondOutFC: each hand sees its frame's object
        out_r = self.out_fc_rhand(torch.cat([h_r, h_o], -1))
        return out_l, out_r, self.out_fc_obj(h_o)


class HandRefiner(nn.Module):
    """Adds an offset Δ_h to each coarse hand frame (T17); the object is not refined.

    Tokens [l_1, r_1, l_2, r_2, …]; frame PE is PE[f−1]; instance PE left PE[0], right PE[1666].
    Every exact ``nn.Linear`` starts at zero (weights and biases), so the refiner starts as the
    identity; the attention projections (a Linear subclass) keep their random init.
    """

    def __init__(self, cfg: Text2HOIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.latent_dim
        self.init_fc_lhand = _FC(cfg.refiner_in_dim, d)
        self.init_fc_rhand = _FC(cfg.refiner_in_dim, d)
        self.sequence_pos_encoder = PositionalEncoding(d, cfg.dropout)
        self.sequence_hand_encoder = PositionalEncoding(d, cfg.dropout)
        self.seqTransEncoder = _encoder(cfg)
        self.out_fc_lhand = _FC(d, HAND_DIM)
        self.out_fc_rhand = _FC(d, HAND_DIM)
        for m in self.modules():
            if type(m) is nn.Linear:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self, in_l: torch.Tensor, in_r: torch.Tensor, x_l: torch.Tensor, x_r: torch.Tensor,
        mask_l: torch.Tensor, mask_r: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``in_*`` (B, T, refiner_in_dim) from :func:`refiner_input`; returns x̃ = x̂ + Δ (T17)."""
        b, n, _ = in_l.shape
        pe = self.sequence_pos_encoder.pe[:, 0]
        hpe = self.sequence_hand_encoder.pe[:, 0]
        frame_pe = pe[:n].unsqueeze(0)
        tl = self.sequence_pos_encoder.dropout(self.init_fc_lhand(in_l) + frame_pe)
        tr = self.sequence_pos_encoder.dropout(self.init_fc_rhand(in_r) + frame_pe)
        tl = self.sequence_hand_encoder.dropout(tl + hpe[0])
        tr = self.sequence_hand_encoder.dropout(tr + hpe[PE_LEN // 3])
        seq = torch.stack([tl, tr], 2).reshape(b, 2 * n, -1)
        pad = ~(torch.stack([mask_l, mask_r], 2).reshape(b, 2 * n) > 0)
        h = self.seqTransEncoder(seq.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1)
        h_l, h_r = h.reshape(b, n, 2, -1).unbind(2)
        return x_l + self.out_fc_lhand(h_l), x_r + self.out_fc_rhand(h_r)
