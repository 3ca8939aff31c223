import json
from dataclasses import dataclass, field

import pytest
import torch

from cvpr24.common import (
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)


@dataclass
class Inner:
    width: int = 8


@dataclass
class Config:
    dims: tuple[int, ...] = (4, 8)
    lr: float = 1e-3
    name: str = "tiny"
    inner: Inner = field(default_factory=Inner)


def _state():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    ).state_dict()


def test_round_trip(tmp_path):
    cfg = Config(dims=(3, 5), inner=Inner(16))
    state = _state()
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        state,
        config=cfg,
        seed=7,
        command="train",
        data="synthetic",
        metrics={"loss": 0.25},
    )
    ck = load_checkpoint(path, Config)
    assert ck.tensors.keys() == state.keys()
    for k in state:
        assert torch.equal(ck.tensors[k], state[k])
    assert (
        ck.config == cfg
        and isinstance(ck.config.dims, tuple)
        and isinstance(ck.config.inner, Inner)
    )
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["seed"] == 7 and meta["command"] == "train" and meta["data"] == "synthetic"
    assert meta["metrics"] == {"loss": 0.25}
    assert meta["config_class"].endswith("Config")
    assert meta["tensors"]["0.weight"] == {"shape": [8, 4], "dtype": "float32"}
    assert len(meta["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_corrupted_weights_raise(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _state(), config=Config())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(path)


def test_truncated_weights_raise_even_without_hash(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _state())
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["sha256"] = None
    (tmp_path / "m.json").write_text(json.dumps(meta))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(path)


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        load_checkpoint(tmp_path / "none.safetensors")
    path = save_checkpoint(tmp_path / "m.safetensors", _state())
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_checkpoint(path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_checkpoint(tmp_path / "m.pt", _state())
    with pytest.raises(ValueError, match="does not define"):
        path = save_checkpoint(tmp_path / "m.safetensors", _state(), config={"unknown": 1})
        load_checkpoint(path, Config)


def test_training_state_resumes_exactly(tmp_path):
    def make():
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return model, opt, sched

    def step(model, opt, sched):
        x = torch.randn(8, 3)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()

    model, opt, sched = make()
    step(model, opt, sched)
    save_training_state(
        tmp_path / "state.pt",
        model=model,
        optimizer=opt,
        scheduler=sched,
        step=1,
        extra={"best": 0.5},
    )
    for _ in range(3):
        step(model, opt, sched)
    straight = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = make()
    info = load_training_state(
        tmp_path / "state.pt", model=model2, optimizer=opt2, scheduler=sched2
    )
    assert info == {"step": 1, "extra": {"best": 0.5}}
    for _ in range(3):
        step(model2, opt2, sched2)
    for a, b in zip(straight, model2.parameters(), strict=True):
        assert torch.equal(a, b)  # same weights, same data draws, same learning rate


def test_training_state_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_training_state(tmp_path / "none.pt", model=torch.nn.Linear(1, 1))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_training_state(tmp_path / "junk.pt", model=torch.nn.Linear(1, 1))
