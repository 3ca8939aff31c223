"""CLIP-T, CLIP-I and DINO from local transformers weights (tiny random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")
from sag_sd_helpers import write_clip_tokenizer  # noqa: E402

from cvpr24.sag.metrics import CLIP_MEAN, CLIP_STD, ClipDinoScorer, load_images, preprocess  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 1000, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16))
    clip.save_pretrained(root / "clip")
    write_clip_tokenizer(root / "tok")
    transformers.CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"),
                               model_max_length=77).save_pretrained(root / "clip")
    transformers.ViTModel(transformers.ViTConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                 num_hidden_layers=2, image_size=32, patch_size=8),
                          add_pooling_layer=False).save_pretrained(root / "dino")
    return root


def images(n, seed):
    rng = np.random.default_rng(seed)
    return [PIL.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_preprocess_resize_crop_normalise():
    px = preprocess([PIL.new("RGB", (300, 200), (255, 0, 128))], size=224)
    assert px.shape == (1, 3, 224, 224)
    expected = (np.array([255, 0, 128]) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(px[0, :, 100, 100].numpy(), expected, rtol=1e-5)


def test_scores_match_the_clip_forward_pass(weights):
    scorer = ClipDinoScorer(weights / "clip", weights / "dino")
    gen, refs = images(3, 0), images(2, 1)
    prompts = ["a photo of a dog", "a dog in the jungle", "a pencil sketch of a dog"]
    scorer.update(gen, prompts, refs)
    out = scorer.compute()
    # Reference: CLIPModel's own forward; logits / logit_scale are the cosines.
    clip = transformers.CLIPModel.from_pretrained(str(weights / "clip")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(weights / "clip"))
    with torch.no_grad():
        res = clip(**tok(prompts, padding=True, return_tensors="pt"), pixel_values=preprocess(gen, 32))
        cos = res.logits_per_image / clip.logit_scale.exp()
        ref_img = clip(**tok(["x"], return_tensors="pt"), pixel_values=preprocess(refs, 32)).image_embeds
    assert out["clip_t"] == pytest.approx(float(cos.diagonal().mean()), abs=1e-5)
    assert out["clip_i"] == pytest.approx(float((res.image_embeds @ ref_img.T).mean()), abs=1e-5)
    assert -1 <= out["dino"] <= 1 and out["n_images"] == 3


def test_identical_images_score_one_and_streaming_averages(weights):
    scorer = ClipDinoScorer(weights / "clip", weights / "dino")
    a = images(2, 3)
    scorer.update(a[:1], ["a dog"], a[:1])
    assert scorer.compute()["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert scorer.compute()["dino"] == pytest.approx(1.0, abs=1e-5)
    first = scorer.compute()
    scorer.update(a[1:], ["a dog"], a[:1])
    two = scorer.compute()
    scorer.reset()
    scorer.update(a[1:], ["a dog"], a[:1])
    assert two["clip_i"] == pytest.approx((first["clip_i"] + scorer.compute()["clip_i"]) / 2, abs=1e-6)


def test_bad_inputs(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="clip_path"):
        ClipDinoScorer(tmp_path / "missing")
    scorer = ClipDinoScorer(weights / "clip")
    with pytest.raises(ValueError, match="prompts"):
        scorer.update(images(2, 0), ["one"], images(1, 1))
    with pytest.raises(ValueError, match="dino_path"):
        scorer.dino_embeds(images(1, 0))
    assert np.isnan(scorer.compute()["dino"])
    with pytest.raises(ValueError, match="no .png"):
        load_images(tmp_path)
