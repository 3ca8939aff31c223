import torch
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
