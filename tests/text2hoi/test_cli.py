import json

import pytest
import torch

from cvpr24.cli import main
from cvpr24.common import save_checkpoint
from cvpr24.text2hoi.model import Text2HOIConfig, TextHOM
from cvpr24.text2hoi.reproduce import hand_models
from cvpr24.text2hoi.train import Text2HOI

trimesh = pytest.importorskip("trimesh")


def _cfg():
    return Text2HOIConfig(
        n_points=32, pointnet_widths=(8, 8, 16), stn_fc=(8, 8), text_dim=384, latent_dim=16, ff_dim=32,
        num_layers=1, max_frames=6, cvae_latent=4, cvae_hidden=(16, 8, 8), len_hidden=8, diffusion_steps=10,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("t2h_cli")
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.04)
    mesh.export(d / "ball.obj")
    trimesh.Trimesh(mesh.vertices, mesh.faces[:-4], process=False).export(d / "open.obj")
    cfg = _cfg()
    m = Text2HOI.build(cfg, hand_models(), 0)
    state = m.state_dict()
    torch.manual_seed(1)
    state.update({f"baseline.{k}": v for k, v in TextHOM(Text2HOIConfig(**{**cfg.__dict__, "use_contact_feat": False})).state_dict().items() if not k.endswith(".pe")})
    save_checkpoint(d / "tiny.safetensors", state, config=cfg, seed=0, extra={"text_encoder": "hashed"})
    return d


def test_generate_then_evaluate(files, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["text2hoi", "generate", "--text", "lift the ball with both hands", "--object", str(files / "ball.obj"),
                 "--hands", "both", "--checkpoint", str(files / "tiny.safetensors"), "--nsamples", "2", "--out", str(out)])
    assert code == 0
    assert (out / "preview.png").stat().st_size > 1000
    import numpy as np

    with np.load(out / "motion.npz") as z:
        assert z["x_lhand"].shape == (2, 6, 99) and z["x_obj"].shape == (2, 6, 9) and z["contact_map"].shape == (2, 32)
    capsys.readouterr()
    code = main(["text2hoi", "evaluate", "--generated", str(out / "motion.npz"), "--object", str(files / "ball.obj")])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["mean"]["phy"] <= 1 and len(res["per_sample"]) == 2


def test_bad_input_exits_2_naming_the_flag(files, tmp_path, capsys):
    assert main(["text2hoi", "generate", "--text", " ", "--object", str(files / "ball.obj"), "--out", str(tmp_path)]) == 2
    assert "--text" in capsys.readouterr().err
    assert main(["text2hoi", "generate", "--text", "grasp it", "--object", str(tmp_path / "no.obj"), "--out", str(tmp_path)]) == 2
    assert "--object" in capsys.readouterr().err
    import numpy as np

    np.savez(tmp_path / "bad.npz", x_lhand=np.zeros((1, 4, 98)), x_rhand=np.zeros((1, 4, 99)), x_obj=np.zeros((1, 4, 9)))
    assert main(["text2hoi", "evaluate", "--generated", str(tmp_path / "bad.npz"), "--object", str(files / "ball.obj")]) == 2
    assert "x_lhand must have shape" in capsys.readouterr().err
    np.savez(tmp_path / "ok.npz", x_lhand=np.zeros((1, 4, 99)), x_rhand=np.zeros((1, 4, 99)), x_obj=np.zeros((1, 4, 9)), is_lhand=True, is_rhand=False)
    assert main(["text2hoi", "evaluate", "--generated", str(tmp_path / "ok.npz"), "--object", str(files / "open.obj")]) == 2
    assert "--object is not watertight" in capsys.readouterr().err
