"""HFVLM on a tiny random LLaVA built locally (nothing is downloaded)."""

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

WORDS = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "system", "user", "assistant", ":", "\n", "on", "my",
         "left", "right", "what", "is", "the", "you", "are", "person"]
CHAT = ("{% for m in messages %}{{ m['role'] }} :{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        " <image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}")


@pytest.fixture(scope="module")
def tiny_llava():
    import warnings

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<image>"])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                     bos_token="<s>", eos_token="</s>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, chat_template=CHAT,
                                            patch_size=8, vision_feature_select_strategy="default",
                                            image_token="<image>", num_additional_image_tokens=1)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=16, patch_size=8)
    text = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                    pad_token_id=1, bos_token_id=2, eos_token_id=3)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=4,
                                   vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(cfg), processor


def test_generate_persona_prompt_and_last_line(tiny_llava, synth_ds, tmp_path):
    from dataclasses import replace

    from cvpr24.egothink.config import EgoThinkConfig
    from cvpr24.egothink.data import EgoThinkDataset, model_answer_path, read_jsonl
    from cvpr24.egothink.prompts import PromptSet
    from cvpr24.egothink.vlm import HFVLM, make_request, run_inference

    model, processor = tiny_llava
    vlm = HFVLM(model=model, processor=processor, style="persona")
    item = synth_ds.by_dim("spatial")[0]
    req = make_request(item, EgoThinkConfig(), "persona")
    rendered = processor.apply_chat_template(vlm.build_messages(req), add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("system : " + PromptSet().persona) and "<image>" in rendered
    out = vlm.generate(replace(req, max_new_tokens=5))
    assert isinstance(out, str) and 0 < len(out.split()) <= 5
    ds = EgoThinkDataset(synth_ds.by_dim("spatial"))
    run_inference(vlm, ds, tmp_path, "tiny-llava", show_progress=False)
    for row in read_jsonl(model_answer_path(tmp_path, "spatial", "tiny-llava")):
        assert "\n" not in row["choices"][0]["turns"][0]  # the last-line rule applied
