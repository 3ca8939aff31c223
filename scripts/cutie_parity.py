"""Parity of ``cvpr24.cutie`` with the official Cutie implementation (max abs probability
difference of ``InferenceCore.step`` vs our ``VideoSegmenter.step``; target 1e-4).

Two steps, because the official code runs in its own environment (torch, torchvision,
omegaconf, hydra-core) from a checkout kept outside this project:

    # 1. official side: random weights (rounded to float16 so both sides see the same values),
    #    a 4-frame 70x100 input with objects 1 and 4 on frame 0 and object 7 added on frame 2,
    #    memory eviction on; saves weights, inputs and probabilities
    /path/to/official-env/bin/python scripts/cutie_parity.py official \
        --repo /path/to/Cutie --variant tiny --out /tmp/official_tiny.pt
    # 2. our side: the same weights through our key map and inference; exits 1 above 1e-4
    .venv/bin/python scripts/cutie_parity.py compare /tmp/official_tiny.pt

``--variant``: ``tiny`` (the reduced width of ``tests/cutie/data/parity_tiny.safetensors``),
``small`` or ``base`` (full width, random weights). Nothing from the official repository is
copied here: this script imports it from ``--repo``.
"""

from __future__ import annotations

import argparse
import sys

TOLERANCE = 1e-4
# inference settings shared by both sides: a memory frame every step, at most 2 working-memory
# frames (so the third step evicts), top-k 8, no resizing
MEM_EVERY, MAX_MEM_FRAMES, TOP_K = 1, 2, 8
TINY_WIDTHS = (8, 8, 16, 32)


def _official_config(variant: str) -> dict:
    """The official model/eval config for ``variant`` as a plain dict."""
    if variant == "tiny":
        c, ck, ch, n, heads, ff, blocks, up = 32, 8, 16, 8, 2, 64, 2, [32, 16, 16]
        ms, enc, mask_final = [32, 16, 8], "resnet18", TINY_WIDTHS[3]
    else:
        c, ck, ch, n, heads, ff, blocks, up = 256, 64, 256, 16, 8, 2048, 3, [256, 128, 128]
        ms, enc = (
            ([1024, 512, 256], "resnet50") if variant == "base" else ([256, 128, 64], "resnet18")
        )
        mask_final = 256
    pe = dict(add_pe_to_qkv=[True, True, False])
    model = dict(
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
        pixel_dim=c,
        key_dim=ck,
        value_dim=c,
        sensory_dim=ch,
        embed_dim=c,
        pixel_encoder=dict(type=enc, ms_dims=ms),
        mask_encoder=dict(type="resnet18", final_dim=mask_final),
        pixel_pe_scale=32,
        pixel_pe_temperature=128,
        object_transformer=dict(
            embed_dim=c,
            ff_dim=ff,
            num_heads=heads,
            num_blocks=blocks,
            num_queries=n,
            read_from_pixel=dict(input_norm=False, input_add_pe=False, **pe),
            read_from_past=pe,
            read_from_memory=pe,
            read_from_query=dict(output_norm=False, **pe),
            query_self_attention=pe,
            pixel_self_attention=pe,
        ),
        object_summarizer=dict(embed_dim=c, num_summaries=n, add_pe=True),
        aux_loss=dict(
            sensory=dict(enabled=True, weight=0.01), query=dict(enabled=True, weight=0.01)
        ),
        mask_decoder=dict(up_dims=up),
    )
    return dict(
        model=model,
        mem_every=MEM_EVERY,
        stagger_updates=5,
        chunk_size=-1,
        save_aux=False,
        max_internal_size=-1,
        flip_aug=False,
        top_k=TOP_K,
        use_long_term=False,
        max_mem_frames=MAX_MEM_FRAMES,
        long_term=dict(
            count_usage=True,
            max_mem_frames=10,
            min_mem_frames=5,
            num_prototypes=128,
            max_num_tokens=10000,
            buffer_tokens=2000,
        ),
    )


def _inputs(generator):
    import torch

    h, w = 70, 100
    frames = torch.rand(4, 3, h, w, generator=generator)
    mask0 = torch.zeros(h, w, dtype=torch.long)
    mask0[10:40, 10:45] = 1
    mask0[30:65, 50:90] = 4
    mask2 = torch.zeros(h, w, dtype=torch.long)
    mask2[5:25, 60:95] = 7
    return frames, mask0, mask2


def _run_four_frames(step, frames, mask0, mask2) -> list:
    return [
        step(frames[0], mask0, [1, 4]),
        step(frames[1]),
        step(frames[2], mask2, [7]),
        step(frames[3], end=True),
    ]


def official(repo: str, variant: str, out: str) -> None:
    """Build the official model with random weights, run it, save everything to ``out``."""
    import torch
    from torch import nn

    sys.path.insert(0, repo)
    from cutie.model.utils import resnet  # the official trunks (layer4 unused)
    from omegaconf import OmegaConf

    widths = TINY_WIDTHS if variant == "tiny" else (64, 64, 128, 256)

    class Trunk(resnet.ResNet):
        """The official ResNet at ``widths`` without layer4 and without pretrained weights."""

        def __init__(self, block, layers, extra_dim=0):
            nn.Module.__init__(self)
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3 + extra_dim, widths[0], 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, widths[1], layers[0])
            self.layer2 = self._make_layer(block, widths[2], layers[1], stride=2)
            self.layer3 = self._make_layer(block, widths[3], layers[2], stride=2)
            self.layer4 = nn.Identity()

    resnet.resnet18 = lambda pretrained=True, extra_dim=0, **_: Trunk(
        resnet.BasicBlock, [2, 2, 2, 2], extra_dim
    )
    resnet.resnet50 = lambda pretrained=True, extra_dim=0, **_: Trunk(
        resnet.Bottleneck, [3, 4, 6, 3], extra_dim
    )
    from cutie.inference.inference_core import InferenceCore
    from cutie.model.cutie import CUTIE

    cfg = OmegaConf.create(_official_config(variant))
    torch.manual_seed(0)
    net = CUTIE(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype != torch.float32 or "inv_freq" in name:
                continue
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            t.copy_(t.half().float())
    frames, mask0, mask2 = _inputs(g)
    core = InferenceCore(net, cfg)
    with torch.inference_mode():
        probs = _run_four_frames(core.step, frames, mask0, mask2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(
        dict(
            variant=variant,
            state_dict=state,
            frames=frames,
            mask0=mask0,
            mask2=mask2,
            probs=[p.clone() for p in probs],
        ),
        out,
    )
    print(f"official {variant}: {sum(p.numel() for p in net.parameters())} parameters, saved {out}")


def compare(path: str) -> float:
    """Run our implementation on the saved weights and inputs; return the max abs difference."""
    import torch

    from cvpr24.cutie.inference import InferenceConfig, VideoSegmenter
    from cvpr24.cutie.model import CutieConfig, CutieModel
    from cvpr24.cutie.weights import detect_config, load_state_dict_strict

    d = torch.load(path, weights_only=True)
    if d["variant"] == "tiny":
        cfg = CutieConfig.cpu()  # the reduced width the official side builds from TINY_WIDTHS
    else:
        cfg = detect_config(d["state_dict"])
    model = CutieModel(cfg)
    load_state_dict_strict(model, d["state_dict"])
    seg = VideoSegmenter(
        model,
        InferenceConfig(
            mem_every=MEM_EVERY, max_mem_frames=MAX_MEM_FRAMES, top_k=TOP_K, max_internal_size=-1
        ),
    )
    with torch.inference_mode():
        ours = _run_four_frames(seg.step, d["frames"], d["mask0"], d["mask2"])
    diffs = [float((a - b).abs().max()) for a, b in zip(ours, d["probs"], strict=True)]
    print(
        f"{d['variant']}: max abs probability difference per frame "
        + ", ".join(f"{x:.2e}" for x in diffs)
        + f"; overall {max(diffs):.2e} "
        f"(tolerance {TOLERANCE:g})"
    )
    return max(diffs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("official", help="run the official code (its own environment)")
    p.add_argument("--repo", required=True, help="checkout of the official Cutie repository")
    p.add_argument("--variant", choices=("tiny", "small", "base"), default="tiny")
    p.add_argument("--out", required=True, help="output .pt file")
    p = sub.add_parser("compare", help="run ours on the saved weights and inputs")
    p.add_argument("dump", help="the .pt file written by 'official'")
    args = parser.parse_args(argv)
    if args.cmd == "official":
        official(args.repo, args.variant, args.out)
        return 0
    return 0 if compare(args.dump) <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
