"""Fine-tuning datasets: the original Emu3FeatureDataset's ids, masks and labels (sft/dataset_refs.npz), the VQA and
text-only layouts, and clear errors for bad prepared data."""

import json
import os
import random

import numpy as np
import pytest

from paddlemix.models.emu3.tokenization_emu3 import Emu3Tokenizer
from paddlemix.trainer.datasets import Emu3FeatureDataset, Emu3TextDataset, Emu3VQADataset
from sft_support import write_prepared


@pytest.fixture(scope="module")
def tokenizer(fixtures_dir):
    return Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer"), padding_side="right")


@pytest.fixture(scope="module")
def refs(fixtures_dir):
    return np.load(fixtures_dir / "sft" / "dataset_refs.npz")


@pytest.fixture(scope="module")
def prepared(fixtures_dir, tmp_path_factory):
    return write_prepared(str(fixtures_dir / "sft"), str(tmp_path_factory.mktemp("prepared")))


@pytest.mark.parametrize("only_vision,key", [(True, "labels_only_vision"), (False, "labels_all")])
def test_text_to_image_matches_original(tokenizer, refs, prepared, only_vision, key):
    m = int(refs["model_max_length"])
    ds = Emu3FeatureDataset(prepared, tokenizer, m, null_prompt_prob=0.0, apply_loss_on_only_vision=only_vision)
    assert len(ds) == refs["input_ids"].shape[0]
    assert (ds.bov, ds.eov) == (int(refs["bov_id"]), int(refs["eov_id"]))
    assert ds.lengths == refs["lengths"].tolist()
    for i in range(len(ds)):
        sample = ds[i]
        np.testing.assert_array_equal(sample["input_ids"], refs["input_ids"][i])
        np.testing.assert_array_equal(sample["attention_mask"], refs["attention_mask"][i])
        np.testing.assert_array_equal(sample["labels"], refs[key][i])


def test_null_prompt_draws_python_random_per_item(tokenizer, refs, prepared):
    """With probability 1 the text is dropped: the string is bos + image, and one random() is drawn per item."""
    m = int(refs["model_max_length"])
    ds = Emu3FeatureDataset(prepared, tokenizer, m, null_prompt_prob=1.0)
    s = str(refs["input_strings"][0])
    bos, boi = tokenizer.bos_token, tokenizer.boi_token
    expected = tokenizer.encode(bos + s[s.index(boi):])
    random.seed(3)
    ids = ds[0]["input_ids"]
    after = random.random()
    random.seed(3)
    random.random()
    assert after == random.random()  # exactly one draw
    np.testing.assert_array_equal(ids[: len(expected)], expected)
    assert (ids[len(expected):] == tokenizer.pad_token_id).all()


def _write(folder, stem, **arrays):
    os.makedirs(os.path.join(folder, "feature"), exist_ok=True)
    os.makedirs(os.path.join(folder, "list"), exist_ok=True)
    np.savez(os.path.join(folder, "feature", stem + ".npz"), **arrays)
    path = os.path.join(folder, "list", "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"prefix": os.path.join(folder, "feature"), "path_list": [stem + ".npz"]}, f)
    return path


def test_vqa_prompt_answer_and_labels(tokenizer, tmp_path):
    codes = np.array([[1, 2, 3], [4, 5, 63]], dtype=np.int64)
    path = _write(str(tmp_path), "q", name=np.str_("q"), texts=np.str_(""), images=codes,
                  question=np.str_("what is red?"), answer=np.str_("a circle"))
    ds = Emu3VQADataset(path, tokenizer, 80, codebook_size=64)
    t = tokenizer
    vis = [f"<|visual token {c:06d}|>" for c in codes.ravel()]
    image = (t.boi_token + "2*3" + t.img_token + "".join(vis[:3]) + t.eol_token + "".join(vis[3:]) + t.eol_token
             + t.eof_token + t.eoi_token)
    prompt = t.encode(t.bos_token + "You are a helpful assistant. USER: " + image + "what is red?. ASSISTANT:")
    answer = t.encode("a circle") + [t.eos_token_id]
    sample = ds[0]
    n = len(prompt) + len(answer)
    np.testing.assert_array_equal(sample["input_ids"][:n], prompt + answer)
    assert (sample["input_ids"][n:] == t.pad_token_id).all() and sample["attention_mask"].sum() == n
    np.testing.assert_array_equal(sample["labels"][len(prompt): n], answer)
    assert (sample["labels"][: len(prompt)] == -100).all() and (sample["labels"][n:] == -100).all()


def test_text_only_labels(tokenizer, tmp_path):
    path = _write(str(tmp_path), "t", name=np.str_("t"), texts=np.str_("hello world"))
    sample = Emu3TextDataset(path, tokenizer, 20)[0]
    body = tokenizer.encode("hello world") + [tokenizer.eos_token_id]
    n = len(body) + 1
    np.testing.assert_array_equal(sample["input_ids"][:n], [tokenizer.bos_token_id] + body)
    np.testing.assert_array_equal(sample["labels"][:n], [-100] + body)
    assert (sample["labels"][n:] == -100).all()


def test_bad_data_is_a_clear_error(tokenizer, refs, prepared, tmp_path):
    m = int(refs["model_max_length"])
    with pytest.raises(FileNotFoundError, match="data list not found"):
        Emu3FeatureDataset(str(tmp_path / "none.json"), tokenizer, m)
    with open(prepared, encoding="utf-8") as f:
        listing = json.load(f)
    listing["path_list"].append("missing.npz")
    bad_list = tmp_path / "bad.json"
    bad_list.write_text(json.dumps(listing))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        Emu3FeatureDataset(str(bad_list), tokenizer, m)
    with pytest.raises(ValueError, match="more than model_max_length"):
        Emu3FeatureDataset(prepared, tokenizer, int(refs["lengths"].max()) - 1)
    path = _write(str(tmp_path / "c"), "x", name=np.str_("x"), texts=np.str_("a"),
                  images=np.array([[0, 64]], dtype=np.int64))
    with pytest.raises(ValueError, match=r"code ids \[64\] are outside the codebook"):
        Emu3FeatureDataset(path, tokenizer, m, codebook_size=64)
    with pytest.raises(ValueError, match="no visual token"):
        Emu3FeatureDataset(prepared, tokenizer, m, codebook_size=65)
    path = _write(str(tmp_path / "z"), "z", name=np.str_("z"))
    with open(os.path.join(tmp_path, "z", "feature", "z.npz"), "wb") as f:
        f.write(b"PK\x03\x04 not a zip archive")
    with pytest.raises(ValueError, match="cannot read feature file"):
        Emu3FeatureDataset(path, tokenizer, m)
    path = _write(str(tmp_path / "v"), "y", name=np.str_("y"), texts=np.str_("a"))
    with pytest.raises(ValueError, match="needs"):
        Emu3VQADataset(path, tokenizer, m)
