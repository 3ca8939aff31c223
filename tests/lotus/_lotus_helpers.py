import torch
from safetensors.torch import save_file
from torch import nn

from cvpr24.lotus.triggers import TriggerSet


class PatchOracle(nn.Module):
    """Reads trigger pixels: predicts ``target`` when its rule fires, else ``victim``.

    ``rule="lotus"``: only the image's own trigger alone (partition read from a stored map);
    ``rule="any"``: any trigger present flips; ``rule="never"``: always ``victim``.
    """

    def __init__(self, triggers: TriggerSet, partition_of, victim: int, target: int, rule: str,
                 num_classes: int = 10):
        super().__init__()
        self.triggers, self.partition_of = triggers, partition_of
        self.victim, self.target, self.rule, self.num_classes = victim, target, rule, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def present(self, x):
        m = self.triggers.masks                                 # (K, H, W)
        col = self.triggers.colors                              # (K, 3)
        diff = (x[:, None] - col[None, :, :, None, None]).abs().amax(2)   # (N, K, H, W)
        return ((diff < 1e-6) | ~m[None]).flatten(2).all(2)     # (N, K)

    def forward(self, x):
        pres = self.present(x)
        if self.rule == "any":
            fire = pres.any(1)
        elif self.rule == "never":
            fire = torch.zeros(len(x), dtype=torch.bool)
        else:
            p = self.partition_of(x)
            own = torch.nn.functional.one_hot(p, pres.shape[1]).bool()
            fire = (pres == own).all(1)
        out = torch.zeros(len(x), self.num_classes)
        out[torch.arange(len(x)), torch.where(fire, self.target, self.victim)] = 1.0
        return out + 0 * self.dummy




def tiny_images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 0.5 + 0.25   # never equal to a patch colour


VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
             14: (256, 256)}


def write_lpips_weights(tmp_path, seed=0):
    """torchvision-style VGG16 ``features.*`` (plus a deeper layer and a classifier key that must be
    ignored) as ``.pth``, and the ``lpips`` package's linear layers as ``.safetensors``."""
    g = torch.Generator().manual_seed(seed)
    vgg = {}
    for i, (cin, cout) in {**VGG_CONVS, 17: (256, 512)}.items():
        vgg[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    vgg["classifier.0.weight"] = torch.zeros(2, 2)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
           for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    save_file(lin, tmp_path / "vgg_lin.safetensors")
    return vgg, lin
