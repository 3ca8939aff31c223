import numpy as np


def random_signed(n: int, seed: int, *, shift: float = 0.0) -> np.ndarray:
    """A tie-free random symmetric signed dissimilarity with zero diagonal."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    D = (A + A.T) / 2 + shift
    np.fill_diagonal(D, 0)
    return D


def hand_example() -> np.ndarray:
    """Spec section 2.2: D01=-2, D02=D12=-1.5, D34=-1.8, all other pairs +1."""
    D = np.ones((5, 5)) - np.eye(5)
    D[0, 1] = D[1, 0] = -2
    D[0, 2] = D[2, 0] = D[1, 2] = D[2, 1] = -1.5
    D[3, 4] = D[4, 3] = -1.8
    return D



def all_partitions(n: int):
    """Every set partition of 0..n-1 as restricted-growth label vectors (Bell(n) of them)."""

    def rec(prefix, k):
        if len(prefix) == n:
            yield list(prefix)
            return
        for c in range(k + 1):
            yield from rec(prefix + [c], max(k, c + 1))

    yield from rec([0], 1)
