"""Emu3Tokenizer against the reference tokenizer outputs (public / held-out config and the real special-id offset)."""

import json

import numpy as np
import paddle
import pytest

from paddlemix.models.emu3.tokenization_emu3 import Emu3Tokenizer


@pytest.fixture(scope="module", params=["config", "real_offset"])
def tokenizer_and_refs(request, fixtures_dir, real_offset_dir):
    root = fixtures_dir if request.param == "config" else real_offset_dir
    return Emu3Tokenizer.from_pretrained(root / "tokenizer"), root / "refs"


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return Emu3Tokenizer.from_pretrained(fixtures_dir / "tokenizer")


def count_lines(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_roundtrip(tokenizer_and_refs):
    tok, refs = tokenizer_and_refs
    ref = np.load(refs / "tokenizer_roundtrip.npz")
    for i, text in enumerate(ref["texts"]):
        expected = ref["ids"][i, : ref["lengths"][i]].tolist()
        ids = tok.encode(str(text))
        assert ids == expected, f"text {i}"
        assert tok.decode(ids) == ref["decoded"][i]
        assert tok.decode(np.asarray(ids), skip_special_tokens=True) == ref["decoded_skip_special"][i]
        assert tok.decode(paddle.to_tensor(ids)) == ref["decoded"][i]


def test_vocabulary_layout(tokenizer_and_refs, fixtures_dir):
    tok, refs = tokenizer_and_refs
    folder = refs.parent / "tokenizer"
    n_ranks = count_lines(folder / "emu3.tiktoken")
    n_vision = count_lines(folder / "emu3_vision_tokens.txt")
    assert tok.pad_token_id == tok.eod_id == n_ranks
    assert tok.convert_tokens_to_ids("<|im_start|>") == n_ranks + 1
    assert tok.convert_tokens_to_ids("<|extra_0|>") == n_ranks + 3
    assert tok.eol_token_id == n_ranks + 3 + 200
    assert tok.eof_token_id == n_ranks + 3 + 201
    assert tok.bos_token_id == n_ranks + 3 + 203
    assert tok.eos_token_id == n_ranks + 3 + 204
    assert (tok.img_token_id, tok.boi_token_id, tok.eoi_token_id) == (n_ranks + 208, n_ranks + 209, n_ranks + 210)
    assert tok.vocab_size == len(tok) == n_ranks + 208 + n_vision
    # the real-offset refs are the config refs with every special id shifted: the LM config pins those ids
    if refs.parent == fixtures_dir:
        llm = json.loads((fixtures_dir / "llm" / "config.json").read_text())
        for role in ("pad", "bos", "eos", "img", "boi", "eoi", "eol", "eof"):
            assert getattr(tok, f"{role}_token_id") == llm[f"{role}_token_id"], role


def test_extra(tokenizer, fixtures_dir):
    ref = np.load(fixtures_dir / "refs" / "tokenizer_extra.npz")
    nfc_input = str(ref["nfc_input"])
    assert tokenizer.encode(nfc_input) == ref["nfc_ids"].tolist()
    assert tokenizer.decode(ref["nfc_ids"]) == ref["nfc_decoded"]
    assert tokenizer.decode(ref["nfc_ids"]) != nfc_input
    assert tokenizer.decode(ref["mixed_ids"]) == ref["mixed_decoded"]
    assert tokenizer.encode(str(ref["mixed_decoded"])) == ref["mixed_ids"].tolist()
    assert tokenizer.decode(ref["mixed_ids"], skip_special_tokens=True) == ref["mixed_decoded_skip_special"]
    assert tokenizer.encode("€") == ref["euro_ids"].tolist()
    assert tokenizer.decode(ref["euro_ids"][:1]) == ref["euro_first_id_decoded"]
    assert tokenizer.decode(ref["euro_ids"]) == "€"
    for name, expected in zip(ref["special_names"], ref["special_ids"]):
        name = str(name)
        if name.startswith("visual_token_"):
            got = tokenizer.convert_tokens_to_ids(f"<|visual token {name.rsplit('_', 1)[1]}|>")
        elif name in ("im_start", "im_end"):
            got = tokenizer.convert_tokens_to_ids(f"<|{name}|>")
        else:
            got = getattr(tokenizer, f"{name}_id")
            assert tokenizer.convert_tokens_to_ids(getattr(tokenizer, name)) == expected
        assert got == expected, name


def test_batch_call_padding(tokenizer):
    texts = ["hello world", "a", "lowres, bad anatomy"]
    rows = [tokenizer.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    for side in ("left", "right"):
        out = tokenizer(texts, return_tensors="np", padding_side=side)
        assert out["input_ids"].shape == (3, width) and out["input_ids"].dtype == np.int64
        for b, row in enumerate(rows):
            n = len(row)
            valid = slice(width - n, width) if side == "left" else slice(0, n)
            expected_ids = np.full(width, pad)
            expected_ids[valid] = row
            expected_mask = np.zeros(width, dtype=np.int64)
            expected_mask[valid] = 1
            np.testing.assert_array_equal(out["input_ids"][b], expected_ids)
            np.testing.assert_array_equal(out.attention_mask[b], expected_mask)
        np.testing.assert_array_equal(out["token_type_ids"], 0)
    assert tokenizer.padding_side == "left"
    pd_out = tokenizer(texts, return_tensors="pd")
    assert isinstance(pd_out["input_ids"], paddle.Tensor) and pd_out["input_ids"].dtype == paddle.int64
    np.testing.assert_array_equal(pd_out["input_ids"].numpy(), tokenizer(texts, return_tensors="np")["input_ids"])
    lists = tokenizer(texts, padding=False)
    assert lists["input_ids"] == rows and lists["attention_mask"] == [[1] * len(r) for r in rows]
    single = tokenizer("hello world")
    assert single["input_ids"] == rows[0]
    max_len = tokenizer(texts, padding="max_length", max_length=width + 3, return_tensors="np")
    assert max_len["input_ids"].shape == (3, width + 3)
    cut = tokenizer(texts, truncation=True, max_length=2, return_tensors="np", padding_side="right")
    np.testing.assert_array_equal(cut["input_ids"][0], rows[0][:2])
    assert tokenizer.batch_decode(tokenizer(texts, return_tensors="pd")["input_ids"], skip_special_tokens=True) == texts


def test_save_and_reload(tokenizer, tmp_path, fixtures_dir):
    tokenizer.save_pretrained(tmp_path)
    reloaded = Emu3Tokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "emu3.tiktoken").read_bytes() == (fixtures_dir / "tokenizer" / "emu3.tiktoken").read_bytes()
    assert reloaded.special_tokens == tokenizer.special_tokens
    assert reloaded.vocab_size == tokenizer.vocab_size
    text = "a shiba inu<|image start|>3*5<|image token|> café"
    assert reloaded.encode(text) == tokenizer.encode(text)
    custom = Emu3Tokenizer.from_pretrained(tmp_path, padding_side="right", eos_token="<|im_end|>")
    assert custom.padding_side == "right" and custom.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_bad_inputs(tokenizer, tmp_path, fixtures_dir):
    with pytest.raises(FileNotFoundError, match="emu3.tiktoken"):
        Emu3Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "emu3.tiktoken").write_bytes((fixtures_dir / "tokenizer" / "emu3.tiktoken").read_bytes())
    with pytest.raises(FileNotFoundError, match="emu3_vision_tokens.txt"):
        Emu3Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([-1])
    with pytest.raises(ValueError, match="unknown token"):
        tokenizer.convert_tokens_to_ids("<|no such token|>")
    with pytest.raises(ValueError, match="padding_side"):
        tokenizer(["a"], padding_side="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        tokenizer(["a"], return_tensors="pt")
    with pytest.raises(ValueError, match="different lengths"):
        tokenizer(["a", "hello world"], padding=False, return_tensors="np")
    with pytest.raises(ValueError, match="not a special token"):
        Emu3Tokenizer.from_pretrained(fixtures_dir / "tokenizer", bos_token="<|nope|>")
