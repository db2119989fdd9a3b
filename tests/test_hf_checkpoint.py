"""transformers' "-hf" layout: the public checkpoint converted by transformers' own convert_emu3_weights_to_hf.py
(fixtures ``public_hf/``), loaded as it is through every entry point, against transformers' outputs on that folder
(``hf_refs.npz``) and the original code's outputs on the original layout (``public/refs``)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from paddlemix.models.emu3 import (
    Emu3Config,
    Emu3ForCausalLM,
    Emu3Processor,
    Emu3Tokenizer,
    Emu3VisionVQConfig,
    Emu3VisionVQImageProcessor,
    Emu3VisionVQModel,
)
from paddlemix.models.emu3.hf_layout import is_hf_folder, resolve_model_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "paddlemix", "examples", "emu3")
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_dir(hf_fixtures_dir):
    return str(hf_fixtures_dir)


@pytest.fixture(scope="module")
def hf_refs(hf_fixtures_dir):
    return np.load(hf_fixtures_dir / "hf_refs.npz")


@pytest.fixture(scope="module")
def refs(fixtures_dir):
    return lambda name: np.load(fixtures_dir / "refs" / f"{name}.npz")


@pytest.fixture(scope="module")
def tokenizer(hf_dir):
    return Emu3Tokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def processor(hf_dir):
    return Emu3Processor.from_pretrained(hf_dir)


def _rows(ids, lengths):
    return [row[:n].tolist() for row, n in zip(ids, lengths)]


# ----------------------------------------------------------------------------- the tokenizer (tokenizer.json)
def test_tokenizer_matches_transformers(tokenizer, hf_refs):
    texts = [str(t) for t in hf_refs["tok_texts"]]
    expected = _rows(hf_refs["tok_ids"], hf_refs["tok_lengths"])
    assert [tokenizer.encode(t) for t in texts] == expected
    assert [tokenizer.decode(ids) for ids in expected] == [str(t) for t in hf_refs["tok_decoded"]]
    skip = [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert skip == [str(t) for t in hf_refs["tok_decoded_skip_special"]]
    batch = tokenizer(texts, padding_side="right", return_tensors="np")
    for row, mask, ids in zip(batch["input_ids"], batch["attention_mask"], expected):
        assert row[mask == 1].tolist() == ids
    for ids, text, text_skip in zip(_rows(hf_refs["dec_ids"], hf_refs["dec_lengths"]), hf_refs["dec_text"],
                                    hf_refs["dec_text_skip_special"]):
        assert tokenizer.decode(ids) == str(text)
        assert tokenizer.decode(np.asarray(ids), skip_special_tokens=True) == str(text_skip)


def test_tokenizer_differs_from_the_original_where_transformers_does(tokenizer, hf_refs, fixtures_dir):
    """The original files keep their own ids (Emu3's regex, NFC): the strings transformers tokenizes differently."""
    original = Emu3Tokenizer.from_pretrained(fixtures_dir / "tokenizer")
    texts = [str(t) for t in hf_refs["tok_texts"]]
    assert [original.encode(t) for t in texts] == _rows(hf_refs["tok_orig_ids"], hf_refs["tok_orig_lengths"])
    same = [tokenizer.encode(t) == original.encode(t) for t in texts]
    assert same == hf_refs["tok_equal_orig"].tolist() and not all(same)


def test_special_ids(tokenizer, hf_refs):
    first_visual = tokenizer.convert_tokens_to_ids("<|visual token 000000|>")
    n_codes = sum(1 for t in tokenizer.special_tokens if re.fullmatch(r"<\|visual token \d{6}\|>", t))
    ours = {
        "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
        "unk": tokenizer.unk_token_id, "image_placeholder <image>": tokenizer.image_token_id,
        "image_wrapper <|image token|>": tokenizer.img_token_id, "boi <|image start|>": tokenizer.boi_token_id,
        "eoi <|image end|>": tokenizer.eoi_token_id, "eol <|extra_200|>": tokenizer.eol_token_id,
        "eof <|extra_201|>": tokenizer.eof_token_id, "first_visual <|visual token 000000|>": first_visual,
        "last_visual": first_visual + n_codes - 1,
        "im_start": tokenizer.convert_tokens_to_ids("<|im_start|>"),
        "im_end": tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    assert ours == dict(zip([str(n) for n in hf_refs["special_names"]], hf_refs["special_ids"].tolist()))
    # <|extra_0|> is plain text in the -hf vocabulary: its id is the placeholder's
    assert "<|extra_0|>" not in tokenizer.special_tokens and len(tokenizer.encode("<|extra_0|>")) > 1


def test_tokenizer_save_and_reload(tokenizer, hf_refs, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = Emu3Tokenizer.from_pretrained(tmp_path)
    texts = [str(t) for t in hf_refs["tok_texts"]]
    assert [again.encode(t) for t in texts] == _rows(hf_refs["tok_ids"], hf_refs["tok_lengths"])
    assert (again.bos_token_id, again.img_token_id, again.image_token_id) == (
        tokenizer.bos_token_id, tokenizer.img_token_id, tokenizer.image_token_id)


def test_added_token_not_marked_special(hf_dir, tmp_path):
    """An added token with "special": false still encodes as one id, but decode(skip_special_tokens=True) keeps it."""
    spec = json.loads(open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8").read())
    entry = next(t for t in spec["added_tokens"] if t["content"] == "<|im_start|>")
    entry["special"] = False
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    tok = Emu3Tokenizer.from_pretrained(tmp_path)
    ids = tok.encode("a<|im_start|>b<|im_end|>")
    assert ids[1] == entry["id"] == tok.convert_tokens_to_ids("<|im_start|>") and len(ids) == 4
    assert tok.decode(ids, skip_special_tokens=True) == "a<|im_start|>b"


def test_tokenizer_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Emu3Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}, "decoder": None}))
    with pytest.raises(ValueError, match="byte-level BPE"):
        Emu3Tokenizer.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- configs
def test_configs_equal_the_original_ones(hf_dir, fixtures_dir):
    """The nested text_config / vq_config with transformers' names give the original configs; image_area, which
    the -hf config does not carry, takes the documented default 518400."""
    llm = Emu3Config.from_pretrained(hf_dir)
    original = Emu3Config.from_pretrained(fixtures_dir / "llm")
    for name in Emu3Config.field_names():
        if name != "image_area":
            assert getattr(llm, name) == getattr(original, name), name
    assert llm.image_area == 518400 and Emu3Config.from_pretrained(hf_dir, image_area=1024).image_area == 1024
    assert Emu3VisionVQConfig.from_pretrained(hf_dir) == Emu3VisionVQConfig.from_pretrained(
        fixtures_dir / "vision_tokenizer")
    assert is_hf_folder(hf_dir) and not is_hf_folder(fixtures_dir / "llm")
    assert resolve_model_paths(hf_dir) == (hf_dir, hf_dir)
    assert resolve_model_paths(str(fixtures_dir / "llm"))[0] == "BAAI/Emu3-VisionTokenizer"


# ----------------------------------------------------------------------------- vision tokenizer
def test_vision_tokenizer(hf_dir, hf_refs, refs, fixtures_dir):
    ref = refs("vq_img_a")
    image_processor = Emu3VisionVQImageProcessor.from_pretrained(hf_dir)
    assert image_processor == Emu3VisionVQImageProcessor.from_pretrained(fixtures_dir / "vision_tokenizer")
    pixels = image_processor(str(fixtures_dir / "inputs" / "img_a.png"), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixels, hf_refs["vq_pixel_values"])
    np.testing.assert_array_equal(pixels, ref["pixel_values"])
    vq = Emu3VisionVQModel.from_pretrained(hf_dir)
    codes = vq.encode(pixels).numpy()
    np.testing.assert_array_equal(codes[0], hf_refs["vq_codes"])
    np.testing.assert_array_equal(codes, ref["codes"])
    recon = vq.decode(codes).numpy()
    assert np.abs(recon - ref["recon"]).max() <= ATOL
    assert np.abs(recon - hf_refs["vq_recon"]).max() <= ATOL
    uint8 = image_processor.postprocess(recon, return_tensors="np")["pixel_values"][0].astype(int)
    assert np.abs(uint8 - ref["recon_uint8"]).max() <= 1
    assert np.abs(uint8 - hf_refs["vq_recon_uint8"]).max() <= 1


def test_processor_config_without_image_processor(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Emu3Processor"}))
    with pytest.raises(ValueError, match="image_processor"):
        Emu3VisionVQImageProcessor.from_pretrained(tmp_path)


def _renamed_to_hf(key):
    """An original VQ key renamed by the rules of transformers' converter (fixtures public_hf/README.md 3.2)."""
    for old, new in ((".q.", ".q_proj."), (".k.", ".k_proj."), (".v.", ".v_proj."), (".proj_out.", ".out_proj."),
                     ("mid.attn_1.norm.", "middle_block.attn_norm.")):
        key = key.replace(old, new)
    key = re.sub(r"attn\.(\d+)\.norm\.", r"attn_norms.\1.", key)
    key = key.replace(".down.", ".down_block.down.", 1) if key.startswith("encoder.down.") else key
    key = key.replace(".up.", ".up_block.up.", 1) if key.startswith("decoder.up.") else key
    return "vqmodel." + key.replace(".mid.", ".middle_block.")


def test_attention_levels_of_different_widths(tmp_path, fixtures_dir, hf_dir, refs):
    """Attention at levels of different widths (ch * ch_mult[level]) loads from an -hf folder.

    transformers cannot write such a folder: its Emu3VQVAEAttentionBlock sizes every attention block with the one
    vq_config.hidden_size. So the folder is built here: the public VQ weights plus attention blocks at a narrower
    level, in the original layout, and the same tensors renamed by the converter's rules (attention 1x1 convolution
    weights squeezed to [C, C]) under the converter's config; both folders must give the same codes and pixels.
    """
    vq_dir = fixtures_dir / "vision_tokenizer"
    config = json.loads((vq_dir / "config.json").read_text())
    wide = max(config["attn_resolutions"])
    keep_weights = len(set(config["ch_mult"])) > 1  # else widen the last level: the fixture's weights no longer fit
    if not keep_weights:
        config["ch_mult"][-1] *= 2
    narrow = next(level for level in range(len(config["ch_mult"]))
                  if config["ch_mult"][level] != config["ch_mult"][wide])
    config["attn_resolutions"] = sorted({narrow, *config["attn_resolutions"]})
    state = load_file(str(vq_dir / "model.safetensors")) if keep_weights else {}
    model = Emu3VisionVQModel(Emu3VisionVQConfig.from_dict(config))
    rng = np.random.default_rng(0)
    for name, param in model.state_dict().items():
        key = model._paddle_to_original_name(name)
        if key not in state:  # new blocks: perturbed initial weights make a wrong mapping (q <-> k) visible
            noise = 0 if key.endswith("running_var") else rng.normal(0, 0.05, param.shape)
            state[key] = (param.numpy() + noise).astype(np.float32)
    added = [k for k in state if re.search(rf"(down|up)\.{narrow}\.attn\.\d+\.q\.weight", k)]
    width = config["ch"] * config["ch_mult"][narrow]
    assert added and all(state[k].shape == (width, width, 1, 1) for k in added)

    original_dir, hf_folder = tmp_path / "original", tmp_path / "hf"
    original_dir.mkdir()
    hf_folder.mkdir()
    (original_dir / "config.json").write_text(json.dumps(config))
    save_file(state, str(original_dir / "model.safetensors"))
    hf_config = json.loads(open(os.path.join(hf_dir, "config.json")).read())
    hf_config["vq_config"].update(attn_resolutions=config["attn_resolutions"], channel_multiplier=config["ch_mult"],
                                  hidden_size=config["ch"] * config["ch_mult"][-1])
    assert hf_config["vq_config"]["hidden_size"] != width
    (hf_folder / "config.json").write_text(json.dumps(hf_config))
    hf_state = {}
    for key, arr in state.items():
        squeeze = re.search(r"\.(q|k|v|proj_out)\.weight$", key) and "attn" in key
        hf_state[_renamed_to_hf(key)] = arr.reshape(arr.shape[:2]) if squeeze else arr
    save_file(hf_state, str(hf_folder / "model.safetensors"), {"format": "pt"})

    a = Emu3VisionVQModel.from_pretrained(str(original_dir))
    b = Emu3VisionVQModel.from_pretrained(str(hf_folder))
    pixels = refs("vq_img_a")["pixel_values"]
    codes = a.encode(pixels).numpy()
    np.testing.assert_array_equal(b.encode(pixels).numpy(), codes)
    np.testing.assert_array_equal(b.decode(codes).numpy(), a.decode(codes).numpy())


# ----------------------------------------------------------------------------- language model
def test_language_model_logits(hf_dir, hf_refs, refs):
    model = Emu3ForCausalLM.from_pretrained(hf_dir)
    logits = model(hf_refs["text_input_ids"]).logits.numpy()
    assert np.abs(logits - hf_refs["text_logits"]).max() <= ATOL
    ref = refs("llm_forward_G_single")
    np.testing.assert_array_equal(hf_refs["text_input_ids"], ref["input_ids"])
    assert np.abs(logits - ref["logits"]).max() <= ATOL
    merged = model(hf_refs["proc_it_merged_ids"]).logits.numpy()
    assert np.abs(merged[:, -1] - hf_refs["it_last_logits"]).max() <= ATOL
    assert np.abs(merged - refs("llm_forward_U_single")["logits"]).max() <= ATOL


# ----------------------------------------------------------------------------- processor
def test_processor_prompt_ids(processor, hf_refs, refs, fixtures_dir):
    t2i = processor(str(hf_refs["proc_t2i_text"]), mode="G", ratio="1:1",
                    image_area=int(hf_refs["proc_t2i_image_area"]), return_tensors="np")
    np.testing.assert_array_equal(t2i["input_ids"], hf_refs["proc_t2i_input_ids"])
    np.testing.assert_array_equal(t2i["input_ids"], refs("processor_G_single")["input_ids"])
    np.testing.assert_array_equal(t2i["image_size"], hf_refs["proc_t2i_image_sizes"])

    image = Image.open(fixtures_dir / "inputs" / "img_a.png")
    ref_u = refs("processor_U_single")
    # transformers' chat prompt with one <image> placeholder, expanded to the image's tokens
    chat = processor(str(hf_refs["proc_it_chat_prompt"]), [image], mode="U", return_tensors="np")
    np.testing.assert_array_equal(chat["input_ids"], hf_refs["proc_it_merged_ids"])
    np.testing.assert_array_equal(chat["input_ids"], ref_u["input_ids"])
    # transformers' ids differ exactly where its model puts the codes in place of the placeholders
    placeholder = hf_refs["proc_it_input_ids"] == processor.tokenizer.image_token_id
    np.testing.assert_array_equal(chat["input_ids"][~placeholder], hf_refs["proc_it_input_ids"][~placeholder])
    # the original's prompt (question without placeholder) with the -hf tokenizer
    plain = processor([str(t) for t in ref_u["text"]], [image], mode="U", return_tensors="np")
    np.testing.assert_array_equal(plain["input_ids"], ref_u["input_ids"])


def test_processor_from_original_layout(fixtures_dir, refs):
    """Emu3Processor.from_pretrained also builds the original layout (image_area from the LM config)."""
    processor = Emu3Processor.from_pretrained(fixtures_dir / "llm", vq_model_path=fixtures_dir / "vision_tokenizer",
                                              tokenizer_path=fixtures_dir / "tokenizer")
    ref = refs("processor_G_single")
    out = processor([str(t) for t in ref["text"]], mode="G", ratio="1:1", return_tensors="np")
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(out["image_size"], ref["image_size"])


def test_placeholder_errors(processor, fixtures_dir):
    image = Image.open(fixtures_dir / "inputs" / "img_a.png")
    with pytest.raises(ValueError, match="2 images for 1 placeholders"):
        processor("USER: <image>What is it?", [image, image], mode="U")
    with pytest.raises(ValueError, match="every text holds <image> placeholders or none"):
        processor(["<image>a", "b"], [image, image], mode="U")
    with pytest.raises(ValueError, match="2 <image> placeholders for 1 images"):
        processor.expand_image_placeholders("<image><image>", [np.zeros((2, 2), np.int64)])


# ----------------------------------------------------------------------------- the example scripts
def _run(script, *args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *map(str, args)], capture_output=True,
                            text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_scripts_with_model_path_alone(hf_dir, fixtures_dir, refs, tmp_path):
    """The three scripts take the -hf folder as --model_path alone and give the original layout's outputs."""
    g, neg = refs("processor_G_single"), refs("processor_G_single_neg")
    image_area = json.loads((fixtures_dir / "llm" / "config.json").read_text())["image_area"]
    _run("run_generation_inference.py", "--model_path", hf_dir, "--prompt", str(g["text"][0]),
         "--no_positive_prompt", "--negative_prompt", str(neg["text"][0]), "--image_area", image_area, "--greedy",
         "--output_dir", tmp_path)
    got = np.asarray(Image.open(tmp_path / "emu3_t2i_00.png").convert("RGB")).astype(int)
    want = np.asarray(Image.open(fixtures_dir / "refs" / "gen_t2i_single_0.png").convert("RGB")).astype(int)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1

    vqa, u = refs("gen_vqa_single"), refs("processor_U_single")
    out = _run("run_understanding_inference.py", "--model_path", hf_dir, "--max_new_tokens", vqa["new_tokens"].shape[1],
               "--image_path", fixtures_dir / "inputs" / f"{u['image_names'][0]}.png", "--question", str(u["text"][0]))
    assert out.endswith(f"Answer 0: {vqa['answers_skip_special'][0]}\n"), out[-500:]

    out = _run("autoencode.py", "--model_path", hf_dir, "--image_path", fixtures_dir / "inputs" / "img_a.png",
               "--output_dir", tmp_path)
    h, w = refs("vq_img_a")["codes"].shape[1:]
    assert f"img_a.png: codes [{h}, {w}]" in out, out
    recon = np.asarray(Image.open(tmp_path / "img_a_recon.png")).astype(int)
    assert np.abs(recon - refs("vq_img_a")["recon_uint8"]).max() <= 1
