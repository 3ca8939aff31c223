"""Streaming inference: :class:`VideoSegmenter` processes a video one frame at a time.

Memory (see ``docs/cutie.md``, "Inference"):

- **pixel (working) memory**: keys ``k``, shrinkage ``d`` and per-object values ``v`` of memory
  frames, read with top-k affinities (Eqs 1-2). Objects first written on the same frame share
  keys (a *bucket*). The first memory frame of a bucket is permanent; the others are kept FIFO,
  ``max_mem_frames - 1`` of them.
- **long-term memory** (``use_long_term``): when working memory is full, its oldest frames are
  consolidated into ``num_prototypes`` prototypes chosen by usage; long-term memory is capped at
  ``max_num_tokens`` tokens, removing the least used first.
- **sensory memory**: one ``C_h x h x w`` map per object, updated by the decoder and by memory
  writes (Eq. 3).
- **object memory**: running sums of object summaries per object (Eqs 5-7), never evicted.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cvpr24.cutie.functional import (
    aggregate,
    autocast_dtype,
    check_amp_dtype,
    chunk_slices,
    pad_divide_by,
    readout,
    similarity,
    softmax_memory,
    unpad,
)
from cvpr24.cutie.model import CutieModel


@dataclass
class LongTermConfig:
    """Long-term memory (XMem-style consolidation); frame counts include the permanent frame."""

    max_mem_frames: int = 10
    min_mem_frames: int = 5
    num_prototypes: int = 128
    max_num_tokens: int = 10000
    buffer_tokens: int = 2000
    count_usage: bool = True


@dataclass
class InferenceConfig:
    """Inference settings. ``max_internal_size`` is the largest short side processed (larger
    frames are downscaled and the output resized back; -1 disables). ``chunk_size`` bounds how
    many objects go through the per-object networks at once (-1 = all)."""

    mem_every: int = 5
    max_mem_frames: int = 5
    top_k: int | None = 30
    stagger_updates: int = 5
    max_internal_size: int = 480
    use_long_term: bool = False
    long_term: LongTermConfig = field(default_factory=LongTermConfig)
    flip_aug: bool = False
    chunk_size: int = -1
    amp: bool = False  # mixed precision, CUDA only (VideoSegmenter refuses other devices)
    amp_dtype: str = "float16"  # or "bfloat16"

    @classmethod
    def default(cls) -> InferenceConfig:
        """DAVIS / MOSE / YouTube-VOS evaluation: 480p, mem_every 5, 5 memory frames, top-k 30."""
        return cls()

    @classmethod
    def plus(cls) -> InferenceConfig:
        """ "Cutie+": same weights, 720p, mem_every 3, 10 memory frames."""
        return cls(max_internal_size=720, mem_every=3, max_mem_frames=10)

    @classmethod
    def long_video(cls) -> InferenceConfig:
        """Long videos (LVOS-style): long-term memory on, bounded memory size."""
        return cls(use_long_term=True)

    @classmethod
    def preset(cls, name: str) -> InferenceConfig:
        presets = {"default": cls.default, "plus": cls.plus, "long": cls.long_video}
        if name not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    def __post_init__(self) -> None:
        if self.mem_every < 1:
            raise ValueError(f"mem_every must be >= 1, got {self.mem_every}")
        frames = self.long_term.max_mem_frames if self.use_long_term else self.max_mem_frames
        if frames < 2:
            raise ValueError(
                f"max_mem_frames must be >= 2 (it counts the permanent frame), got {frames}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.use_long_term and self.long_term.min_mem_frames >= self.long_term.max_mem_frames:
            raise ValueError("long_term.min_mem_frames must be < long_term.max_mem_frames")
        check_amp_dtype(self.amp_dtype)


class _KVStore:
    """Keys/shrinkage/(selection) of one bucket with a value per object; tokens on the last
    axis, the first ``perm`` of them permanent. Usage counts cover the non-permanent part."""

    def __init__(self, objects: list[int]):
        self.objects = list(objects)
        self.key = self.shrinkage = self.selection = None
        self.values: dict[int, torch.Tensor] = {}
        self.perm = 0
        self.use_cnt = self.life_cnt = None

    @property
    def size(self) -> int:
        return 0 if self.key is None else self.key.shape[-1]

    def add(
        self, key, shrinkage, selection, values: dict[int, torch.Tensor], permanent: bool
    ) -> None:
        def cat(old, new):
            if old is None:
                return new
            return torch.cat([new, old], -1) if permanent else torch.cat([old, new], -1)

        if permanent and self.size > self.perm:
            raise RuntimeError("permanent tokens must be added before temporary ones")
        n = key.shape[-1]
        self.key, self.shrinkage = cat(self.key, key), cat(self.shrinkage, shrinkage)
        if selection is not None:
            self.selection = cat(self.selection, selection)
        for obj, v in values.items():
            self.values[obj] = cat(self.values.get(obj), v)
        if permanent:
            self.perm += n
        else:
            zeros = key.new_zeros(key.shape[0], n)
            self.use_cnt = cat(self.use_cnt, zeros)
            self.life_cnt = cat(self.life_cnt, zeros + 1e-7)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep the permanent tokens and the non-permanent tokens at ``idx`` (relative)."""
        p = self.perm
        full = torch.cat([torch.arange(p, device=idx.device), idx + p])
        self.key, self.shrinkage = self.key[..., full], self.shrinkage[..., full]
        if self.selection is not None:
            self.selection = self.selection[..., full]
        self.values = {o: v[..., full] for o, v in self.values.items()}
        self.use_cnt, self.life_cnt = self.use_cnt[:, idx], self.life_cnt[:, idx]

    def add_usage(self, usage: torch.Tensor) -> None:
        """usage (B, N) summed affinity of every token of this store."""
        if self.use_cnt is not None and self.use_cnt.shape[1] > 0:
            self.use_cnt = self.use_cnt + usage[:, self.perm :]
            self.life_cnt = self.life_cnt + 1

    def usage(self) -> torch.Tensor:
        return self.use_cnt / self.life_cnt


class VideoSegmenter:
    """Propagate object masks through a video, one frame at a time.

    Parameters
    ----------
    model : CutieModel (put in eval mode here).
    config : InferenceConfig, default ``InferenceConfig.default()``.
    device : where to run; default the model's device (CPU unless moved).

    Examples
    --------
    >>> seg = VideoSegmenter(model)                                    # doctest: +SKIP
    >>> probs = seg.step(frame0, mask0)          # index mask (H, W)    # doctest: +SKIP
    >>> probs = seg.step(frame1)                 # (K + 1, H, W)        # doctest: +SKIP
    >>> ids = seg.prob_to_index_mask(probs)      # object ids per pixel # doctest: +SKIP
    """

    def __init__(self, model: CutieModel, config: InferenceConfig | None = None, device=None):
        self.model = model.eval()
        self.config = config or InferenceConfig.default()
        self.device = torch.device(device) if device is not None else model.pixel_mean.device
        c = self.config
        self.amp_dtype = autocast_dtype(c.amp_dtype, self.device) if c.amp else None
        if self.device != model.pixel_mean.device:
            self.model.to(self.device)
        every = c.mem_every
        if c.stagger_updates >= every:
            self.stagger = set(range(1, every + 1))
        else:
            self.stagger = set(
                np.round(np.linspace(1, every, c.stagger_updates)).astype(int).tolist()
            )
        if c.use_long_term:
            self.max_work_frames = c.long_term.max_mem_frames - 1
            self.min_work_frames = c.long_term.min_mem_frames - 1
        else:
            self.max_work_frames = c.max_mem_frames - 1
        self.clear_memory()

    # ------------------------------------------------------------------ state

    def clear_memory(self) -> None:
        """Forget everything (objects included); the next step needs a mask."""
        self.object_ids: list[int] = []
        self.work: list[_KVStore] = []
        self.long: dict[int, _KVStore] = {}  # bucket index in ``work`` -> long-term store
        self.sensory: dict[int, torch.Tensor] = {}
        self.obj_sums: dict[int, torch.Tensor] = {}
        self.frame_index = -1
        self.last_mem_index = 0
        self.last_mask: torch.Tensor | None = None

    def delete_objects(self, ids: Iterable[int]) -> None:
        """Stop tracking ``ids``: their channels, memory values and summaries are removed."""
        ids = set(int(i) for i in ids)
        unknown = ids - set(self.object_ids)
        if unknown:
            raise ValueError(f"ids: not tracked: {sorted(unknown)} (tracked: {self.object_ids})")
        keep_ch = [i for i, o in enumerate(self.object_ids) if o not in ids]
        self.object_ids = [self.object_ids[i] for i in keep_ch]
        if self.last_mask is not None:
            self.last_mask = self.last_mask[:, keep_ch]
        for o in ids:
            self.sensory.pop(o, None)
            self.obj_sums.pop(o, None)
        new_work, new_long = [], {}
        for bi, store in enumerate(self.work):
            store.objects = [o for o in store.objects if o not in ids]
            for o in ids:
                store.values.pop(o, None)
            if store.objects:
                if bi in self.long:
                    lt = self.long[bi]
                    lt.objects = list(store.objects)
                    for o in ids:
                        lt.values.pop(o, None)
                    new_long[len(new_work)] = lt
                new_work.append(store)
        self.work, self.long = new_work, new_long

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def memory_tokens(self) -> dict[str, int]:
        """Tokens currently held: working, long-term, and object-memory summaries."""
        return {
            "working": sum(s.size for s in self.work),
            "long_term": sum(s.size for s in self.long.values()),
            "object": sum(v.shape[1] for v in self.obj_sums.values()),
        }

    # ------------------------------------------------------------------ input checks

    def _check_image(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = torch.as_tensor(np.asarray(image))
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image: expected a (3, H, W) RGB tensor, got shape {tuple(image.shape)}"
            )
        if not image.is_floating_point():
            raise ValueError(
                f"image: expected float values in [0, 1], got dtype {image.dtype}; "
                "convert uint8 frames with image.float() / 255"
            )
        lo, hi = float(image.min()), float(image.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"image: values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        return image.to(self.device, torch.float32)

    def _check_mask(self, mask, objects, size) -> tuple[torch.Tensor, list[int], bool]:
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
        is_index = not mask.is_floating_point()
        if is_index:
            if mask.ndim != 2:
                raise ValueError(
                    f"mask: an index mask must be (H, W), got shape {tuple(mask.shape)}"
                )
            ids = sorted(int(i) for i in torch.unique(mask).tolist() if i != 0)
            if objects is None:
                objects = ids
            else:
                extra = set(ids) - set(int(o) for o in objects)
                if extra:
                    raise ValueError(f"objects: the mask contains ids {sorted(extra)} not listed")
        else:
            if mask.ndim != 3:
                raise ValueError(
                    f"mask: a probability mask must be (K, H, W), got shape {tuple(mask.shape)}"
                )
            if objects is None:
                objects = list(range(1, mask.shape[0] + 1))
            if len(objects) != mask.shape[0]:
                raise ValueError(f"objects: {len(objects)} ids for {mask.shape[0]} mask channels")
            if float(mask.min()) < 0 or float(mask.max()) > 1:
                raise ValueError("mask: probabilities must lie in [0, 1]")
        if tuple(mask.shape[-2:]) != tuple(size):
            raise ValueError(
                f"mask: size {tuple(mask.shape[-2:])} does not match the image {tuple(size)}"
            )
        objects = [int(o) for o in objects]
        if any(o <= 0 for o in objects) or len(set(objects)) != len(objects):
            raise ValueError(f"objects: ids must be distinct positive integers, got {objects}")
        return mask.to(self.device), objects, is_index

    # ------------------------------------------------------------------ main step

    @torch.inference_mode()
    def step(
        self,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        objects: Sequence[int] | None = None,
        *,
        end: bool = False,
        force_permanent: bool = False,
    ) -> torch.Tensor:
        """Process one frame; returns probabilities (K + 1, H, W) over {background, objects}.

        Parameters
        ----------
        image : (3, H, W) float RGB in [0, 1].
        mask : optional. An integer index mask (H, W) (0 = background, value = object id) or a
            float (K, H, W) per-object probability mask. Objects it names that are not tracked
            yet are added (ids need not be consecutive; channel order = order of first
            appearance); tracked objects it names are overwritten; other tracked objects are
            still propagated from memory.
        objects : ids present in ``mask`` (default: the non-zero values of an index mask, or
            1..K for a probability mask).
        end : the last frame: no memory or sensory update.
        force_permanent : store this frame in permanent memory.
        """
        cfg = self.config
        image = self._check_image(image)
        h0, w0 = image.shape[-2:]
        if mask is not None:
            mask, objects, is_index = self._check_mask(mask, objects, (h0, w0))
        elif not self.work:
            raise ValueError("mask: the first step (or the first after clear_memory) needs a mask")

        image, mask = self._resize_input(image, mask, is_index if mask is not None else True)
        self.frame_index += 1
        image, pad = pad_divide_by(image, 16)
        image = image.unsqueeze(0)
        if cfg.flip_aug:
            image = torch.cat([image, image.flip(-1)], 0)

        since = self.frame_index - self.last_mem_index
        is_mem_frame = (since >= cfg.mem_every or mask is not None) and not end
        # segment from memory unless the given mask names every tracked object
        need_segment = mask is None or not set(self.object_ids) <= set(objects)
        update_sensory = since in self.stagger and not end

        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
            ms_feat, pix_feat = self.model.encode_image(image)
            key, shrinkage, selection = self.model.transform_key(ms_feat[0])
            prob = (
                self._segment(ms_feat, pix_feat, key, selection, update_sensory)
                if need_segment
                else None
            )

            if mask is not None:
                mask, _ = pad_divide_by(mask, 16)
                prob = self._merge_mask(prob, mask, objects, is_index)
                if prob is None:  # an empty first mask: nothing to track
                    warnings.warn(
                        "mask: the given mask contains no object; output is all background",
                        stacklevel=2,
                    )
                    return torch.ones(1, h0, w0, device=self.device)

            last = prob[1:].unsqueeze(0)
            self.last_mask = torch.cat([last, last.flip(-1)], 0) if cfg.flip_aug else last
            if is_mem_frame or force_permanent:
                self._add_memory(image, pix_feat, key, shrinkage, selection, force_permanent)

        out = unpad(prob, pad).float()
        if tuple(out.shape[-2:]) != (h0, w0):
            out = F.interpolate(out[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        return out

    def prob_to_index_mask(self, probs: torch.Tensor) -> torch.Tensor:
        """(K + 1, H, W) probabilities -> (H, W) int64 mask of object ids (0 = background)."""
        lut = torch.tensor([0, *self.object_ids], device=probs.device, dtype=torch.long)
        return lut[probs.argmax(0)]

    # ------------------------------------------------------------------ internals

    def _resize_input(self, image, mask, is_index):
        limit = self.config.max_internal_size
        h, w = image.shape[-2:]
        if limit <= 0 or min(h, w) <= limit:
            return image, mask
        nh, nw = int(h / min(h, w) * limit), int(w / min(h, w) * limit)
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if mask is not None:
            if is_index:
                mask = F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest-exact")[
                    0, 0
                ]
                mask = mask.round().long()
            else:
                mask = F.interpolate(
                    mask[None], size=(nh, nw), mode="bilinear", align_corners=False
                )[0]
        return image, mask

    def _merge_mask(self, prob, mask, objects, is_index) -> torch.Tensor | None:
        """Combine a given mask with the prediction of the other tracked objects, then turn it
        into probabilities with Eq. 14."""
        new = [o for o in objects if o not in self.object_ids]
        self.object_ids.extend(new)
        if is_index:
            given = {o: (mask == o).float() for o in objects}
            covered = mask > 0
        else:
            given = {o: mask[i].float() for i, o in enumerate(objects)}
            covered = mask.max(0).values > 0.5
        if not self.object_ids:
            self.object_ids = []
            return None
        if prob is None:
            channels = [given[o] for o in self.object_ids]
        else:
            pred = prob[1:].clone()
            pred[:, covered] = 0  # mutual exclusion with the given mask
            channels = [given[o] if o in given else pred[i] for i, o in enumerate(self.object_ids)]
        return torch.softmax(aggregate(torch.stack(channels, 0), dim=0), dim=0)

    def _sensory(self, ids: list[int], like: torch.Tensor) -> torch.Tensor:
        b, _, h, w = like.shape
        c_h = self.model.cfg.sensory_dim
        for o in ids:
            if o not in self.sensory:
                self.sensory[o] = like.new_zeros(b, c_h, h, w, dtype=torch.float32)
        return torch.stack([self.sensory[o] for o in ids], 1)

    def _segment(self, ms_feat, pix_feat, key, selection, update_sensory) -> torch.Tensor:
        """Read memory (Eqs 1-2, 4, 8-13) and decode (Eq. 14); returns (K + 1, H, W)."""
        cfg, model = self.config, self.model
        b, _, h, w = key.shape
        qk, qe = key.flatten(2).float(), selection.flatten(2).float()
        readouts: dict[int, torch.Tensor] = {}
        for bi, store in enumerate(self.work):
            lt = self.long.get(bi)
            mk, ms = store.key, store.shrinkage
            if lt is not None:
                mk, ms = torch.cat([lt.key, mk], -1), torch.cat([lt.shrinkage, ms], -1)
            affinity = softmax_memory(similarity(mk.float(), ms.float(), qk, qe), cfg.top_k)
            if cfg.use_long_term:
                usage = affinity.sum(2)
                n_lt = 0 if lt is None else lt.size
                store.add_usage(usage[:, n_lt:])
                if lt is not None and cfg.long_term.count_usage:
                    lt.add_usage(usage[:, :n_lt])
            objs = store.objects
            # as in the official code, "the other objects" of Eq. 4 are those of this bucket
            bucket_mask = self.last_mask[:, [self.object_ids.index(o) for o in objs]]
            for sl in chunk_slices(len(objs), cfg.chunk_size):
                ids = objs[sl]
                values = []
                for o in ids:
                    v = store.values[o]
                    values.append(v if lt is None else torch.cat([lt.values[o], v], -1))
                r = readout(affinity, torch.stack(values, 1).float()).view(b, len(ids), -1, h, w)
                r0 = model.pixel_fusion(pix_feat, r, self._sensory(ids, key), bucket_mask, sl)
                summaries = (
                    torch.stack([self.obj_sums[o] for o in ids], 1).unsqueeze(2)
                    if model.object_transformer_enabled
                    else None
                )
                r_l, _ = model.readout_query(r0, summaries)
                for i, o in enumerate(ids):
                    readouts[o] = r_l[:, i]
        readout_all = torch.stack([readouts[o] for o in self.object_ids], 1)
        sensory, _, prob = model.segment(
            ms_feat,
            readout_all,
            self._sensory(self.object_ids, key),
            update_sensory=update_sensory,
            chunk_size=cfg.chunk_size,
        )
        if update_sensory:
            for i, o in enumerate(self.object_ids):
                self.sensory[o] = sensory[:, i]
        prob = prob.float()
        return (prob[0] + prob[1].flip(-1)) / 2 if cfg.flip_aug else prob[0]

    def _add_memory(self, image, pix_feat, key, shrinkage, selection, force_permanent) -> None:
        """Encode the current soft masks and write every memory."""
        cfg, model = self.config, self.model
        ids = list(self.object_ids)
        value, sensory, summaries = model.encode_mask(
            image, pix_feat, self._sensory(ids, key), self.last_mask, chunk_size=cfg.chunk_size
        )
        for i, o in enumerate(ids):
            self.sensory[o] = sensory[:, i]
            if summaries is not None:
                s = summaries[:, i].float()
                self.obj_sums[o] = self.obj_sums[o] + s if o in self.obj_sums else s
        k, s_ = key.flatten(2).float(), shrinkage.flatten(2).float()
        e = selection.flatten(2).float() if cfg.use_long_term else None
        values = {o: value[:, i].flatten(2).float() for i, o in enumerate(ids)}

        known = {o for st in self.work for o in st.objects}
        fresh = [o for o in ids if o not in known]
        if fresh:
            self.work.append(_KVStore(fresh))
        hw = k.shape[-1]
        for bi, store in enumerate(self.work):
            permanent = force_permanent or store.perm == 0
            store.add(k, s_, e, {o: values[o] for o in store.objects}, permanent)
            if cfg.use_long_term:
                if store.size - store.perm >= self.max_work_frames * hw:
                    self._consolidate(bi, hw)
            else:
                excess = store.size - store.perm - self.max_work_frames * hw
                if excess > 0:
                    n = store.size - store.perm
                    store.keep(torch.arange(excess, n, device=k.device))
        self.last_mem_index = self.frame_index

    def _consolidate(self, bi: int, hw: int) -> None:
        """Move the oldest working-memory frames into long-term memory as prototypes."""
        ltc = self.config.long_term
        store = self.work[bi]
        lt = self.long.setdefault(bi, _KVStore(store.objects))
        if lt.size >= ltc.max_num_tokens - ltc.num_prototypes:
            survive = ltc.max_num_tokens - ltc.num_prototypes - ltc.buffer_tokens
            idx = torch.topk(lt.usage(), k=survive, dim=-1).indices[0]
            lt.keep(idx.sort().values)
        p, n = store.perm, store.size - store.perm
        n_old = n - self.min_work_frames * hw
        sl = slice(p, p + n_old)
        cand_k, cand_s, cand_e = (
            store.key[..., sl],
            store.shrinkage[..., sl],
            store.selection[..., sl],
        )
        usage = store.usage()[:, :n_old]
        protos = torch.topk(usage, k=min(ltc.num_prototypes, n_old), dim=-1).indices  # B, P
        pk = torch.stack([cand_k[i][:, protos[i]] for i in range(cand_k.shape[0])])
        pe = torch.stack([cand_e[i][:, protos[i]] for i in range(cand_e.shape[0])])
        # potentiation: each prototype reads the candidates it summarizes (full softmax)
        affinity = softmax_memory(similarity(cand_k, cand_s, pk, pe), None)
        pv = {o: store.values[o][..., sl] @ affinity for o in store.objects}
        ps = cand_s @ affinity
        lt.add(pk, ps, None, pv, permanent=False)
        store.keep(torch.arange(n_old, n, device=store.key.device))


def segment_video(
    model: CutieModel,
    frames: Iterable[torch.Tensor],
    first_mask: torch.Tensor,
    config: InferenceConfig | None = None,
    objects: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Segment a whole video from its first-frame index mask; returns one (H, W) index mask
    (object ids) per frame. ``frames`` are (3, H, W) floats in [0, 1]."""
    frames = list(frames)
    seg = VideoSegmenter(model, config)
    out = []
    for t, frame in enumerate(frames):
        probs = seg.step(
            frame,
            first_mask if t == 0 else None,
            objects if t == 0 else None,
            end=t == len(frames) - 1,
        )
        out.append(seg.prob_to_index_mask(probs).cpu())
    return out
