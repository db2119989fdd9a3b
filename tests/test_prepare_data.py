"""prepare_data.py against the original's prepare_data.py outputs (fixtures sft/features.npz), and its handling of
re-runs, bad images, VQA and text-only items and malformed data lists."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paddlemix.models.emu3 import Emu3VisionVQImageProcessor
from paddlemix.models.emu3.tokenization_emu3 import Emu3Tokenizer
from paddlemix.trainer.data_prep import area_resize, load_pixels, read_feature, read_input_list, write_feature
from paddlemix.trainer.datasets import Emu3FeatureDataset

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "paddlemix" / "examples" / "emu3" / "prepare_data.py")


@pytest.fixture(scope="module")
def sft_dir(fixtures_dir):
    return fixtures_dir / "sft"


@pytest.fixture(scope="module")
def image_area(fixtures_dir):
    with open(fixtures_dir / "llm" / "config.json", encoding="utf-8") as f:
        return json.load(f)["image_area"]


@pytest.fixture(scope="module")
def features(sft_dir):
    with np.load(sft_dir / "features.npz") as npz:
        arrays = dict(npz)
    with open(sft_dir / "features.json", encoding="utf-8") as f:
        return arrays, json.load(f)


def run_script(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run([sys.executable, SCRIPT] + [str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    return res


def test_codes_and_list_match_the_original(fixtures_dir, sft_dir, image_area, features, tmp_path):
    refs, info = features
    out = tmp_path / "out"
    args = ["--model_path", fixtures_dir / "vision_tokenizer", "--data-path", sft_dir / "data.json",
            "--output_path", out, "--image-area", image_area]
    # run from a folder where the relative image paths do not resolve: they are found beside data.json
    res = run_script(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    names = [s["name"] for s in info["samples"]]
    with open(out / "list" / "train.json", encoding="utf-8") as f:
        assert json.load(f) == {"prefix": f"{out}/feature", "path_list": [f"{n}.npz" for n in names]}
    for sample in info["samples"]:
        path = out / "feature" / f"{sample['name']}.npz"
        with np.load(path, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["images", "name", "texts"]
            assert npz["images"].dtype == np.int64
            np.testing.assert_array_equal(npz["images"], refs[f"codes_{sample['name']}"])
            assert str(npz["name"]) == sample["name"] and str(npz["texts"]) == sample["text"]
    # what the training dataset makes of them: the original Emu3FeatureDataset's ids and labels
    refs_ds = np.load(sft_dir / "dataset_refs.npz")
    tokenizer = Emu3Tokenizer.from_pretrained(str(fixtures_dir / "tokenizer"), padding_side="right")
    dataset = Emu3FeatureDataset(str(out / "list" / "train.json"), tokenizer, int(refs_ds["model_max_length"]),
                                 null_prompt_prob=0.0, apply_loss_on_only_vision=True)
    for i in range(len(names)):
        np.testing.assert_array_equal(dataset[i]["input_ids"], refs_ds["input_ids"][i])
        np.testing.assert_array_equal(dataset[i]["labels"], refs_ds["labels_only_vision"][i])

    # a re-run skips what is written; a truncated file (an interrupted write elsewhere) is prepared again
    broken = out / "feature" / f"{names[0]}.npz"
    broken.write_bytes(broken.read_bytes()[:40])
    kept = out / "feature" / f"{names[1]}.npz"
    stamp = kept.stat().st_mtime_ns
    res = run_script(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"wrote 1 samples, {len(names) - 1} were already prepared, 0 skipped" in res.stdout
    assert kept.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(read_feature(broken)["images"], refs[f"codes_{names[0]}"])


def test_pixel_values_match_the_original(fixtures_dir, sft_dir, image_area, features):
    refs, info = features
    processor = Emu3VisionVQImageProcessor.from_pretrained(fixtures_dir / "vision_tokenizer")
    for sample in info["samples"]:
        path = sft_dir / sample["image"]
        with Image.open(path) as im:
            resized = area_resize(im.convert("RGB"), image_area)
        assert [resized.height, resized.width] == sample["prepare_smart_resize_hw"]
        pixels = load_pixels(str(path), processor, image_area)
        ref = refs[f"pixel_values_{sample['name']}"]
        assert pixels.shape == ref.shape and pixels.dtype == np.float32
        np.testing.assert_allclose(pixels, ref, rtol=0, atol=1e-6)


def test_area_resize_rounds_half_to_even():
    # 20 wide, 5 high, area 25: ratio exactly 0.5, height 2.5 -> 2 (Python's round), width 10
    assert area_resize(Image.new("RGB", (20, 5)), 25).size == (10, 2)
    # 100 wide, 120 high, area 1024: ratio sqrt(1024 / 12000) = 0.2921; 35.05 -> 35, 29.21 -> 29
    assert area_resize(Image.new("RGB", (100, 120)), 1024).size == (29, 35)
    with pytest.raises(ValueError, match="side of 0"):
        area_resize(Image.new("RGB", (400, 1)), 4)
    with pytest.raises(ValueError, match="image_area"):
        area_resize(Image.new("RGB", (4, 4)), 0)


def test_bad_images_are_skipped_and_vqa_and_text_items_kept(fixtures_dir, sft_dir, image_area, features, tmp_path):
    refs, info = features
    first, second, third = (info["samples"][i] for i in range(3))
    work = tmp_path / "cwd"
    data_dir = tmp_path / "data"
    work.mkdir()
    data_dir.mkdir()
    (data_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # the same relative path exists in the current folder and beside data.json: the current folder wins
    shutil.copy(sft_dir / second["image"], work / "pic.png")
    shutil.copy(sft_dir / third["image"], data_dir / "pic.png")
    Image.new("RGB", (60, 10), (200, 10, 10)).save(data_dir / "too_wide.png")
    items = [
        {"name": "good", "image": str((sft_dir / first["image"]).resolve()), "text": first["text"]},
        {"name": "missing", "image": "nowhere/none.png", "text": "x"},
        {"name": "corrupt", "image": "corrupt.png", "text": "y"},
        {"name": "too_wide", "image": "too_wide.png", "text": "aspect ratio 6 is refused by the image processor"},
        {"name": "vqa", "image": "pic.png", "question": "What is shown?", "answer": "A red circle."},
        {"name": "text_only", "text": "just some text"},
    ]
    with open(data_dir / "data.json", "w", encoding="utf-8") as f:
        json.dump(items, f)
    out = tmp_path / "out"
    res = run_script(["--model_path", fixtures_dir / "vision_tokenizer", "--data_path", data_dir / "data.json",
                      "--output_path", out, "--image_area", image_area, "--batch_size", 2], cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    # the image processor refuses an aspect ratio of 6 (or, for a tiny image_area, a side below its spatial factor)
    reasons = {"missing": "not found", "corrupt": "cannot read", "too_wide": "aspect ratio|at least"}
    for name, reason in reasons.items():
        assert any(f"skipping {name}:" in line and re.search(reason, line) for line in log.splitlines()), (name, log)
    assert "skipped (missing or unreadable image): missing, corrupt, too_wide" in res.stdout
    with open(out / "list" / "train.json", encoding="utf-8") as f:
        assert json.load(f)["path_list"] == ["good.npz", "vqa.npz", "text_only.npz"]
    assert sorted(os.listdir(out / "feature")) == ["good.npz", "text_only.npz", "vqa.npz"]

    good = read_feature(out / "feature" / "good.npz")
    np.testing.assert_array_equal(good["images"], refs[f"codes_{first['name']}"])
    vqa = read_feature(out / "feature" / "vqa.npz")
    assert {k: v for k, v in vqa.items() if k != "images"} == {
        "name": "vqa", "texts": "", "question": "What is shown?", "answer": "A red circle."}
    np.testing.assert_array_equal(vqa["images"], refs[f"codes_{second['name']}"])
    with np.load(out / "feature" / "text_only.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["name", "texts"]
        assert str(npz["texts"]) == "just some text"


@pytest.mark.parametrize("content, message", [
    ("[{\"name\": \"a\", \"text\": \"t\"", "not valid JSON"),
    ("{\"name\": \"a\"}", "JSON list"),
    ("[]", "empty list"),
    ("[{\"name\": \"a\", \"text\": \"t\"}, {\"name\": \"a\", \"text\": \"u\"}]", "duplicate names \\['a'\\]"),
    ("[{\"name\": \"a\", \"image\": \"x.png\"}]", "t2i item lacks \\['text'\\]"),
    ("[{\"name\": \"a\", \"image\": \"x.png\", \"question\": \"q\"}]", "vqa item lacks \\['answer'\\]"),
    ("[{\"name\": \"a\", \"imgae\": \"x.png\", \"text\": \"t\"}]", "unknown field\\(s\\) \\['imgae'\\]"),
    ("[{\"name\": \"a\", \"text\": 3}]", "'text' must be a string"),
    ("[{\"name\": \"../a\", \"text\": \"t\"}]", "cannot be a file name"),
    ("[{\"name\": \"\", \"text\": \"t\"}]", "'name' is empty"),
    ("[\"a.png\"]", "item 0: expected a JSON object"),
])
def test_malformed_data_lists_fail_before_any_work(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_input_list(str(path))
    from paddlemix.examples.emu3 import prepare_data

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        prepare_data.main(["--model_path", str(tmp_path / "no_model"), "--data_path", str(path),
                           "--output_path", str(out)])
    assert not out.exists()


def test_feature_files_refuse_pickles_and_bad_fields(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, name=np.array(["a", None], dtype=object), texts=np.str_("t"))
    with pytest.raises(ValueError, match="cannot read feature file"):
        read_feature(path)
    np.savez(path, name=np.str_("a"), texts=np.str_("t"), images=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="int64"):
        read_feature(path)
    with pytest.raises(ValueError, match="integer"):
        write_feature(str(path), {"name": "a", "texts": "t"}, np.zeros((2, 2), np.float32))
    with pytest.raises(FileNotFoundError):
        read_feature(tmp_path / "none.npz")


def test_missing_vision_tokenizer_is_named_before_anything_is_written(sft_dir, tmp_path):
    from paddlemix.examples.emu3 import prepare_data

    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="cannot load the vision tokenizer from .*no_model"):
        prepare_data.main(["--model_path", str(tmp_path / "no_model"), "--data_path", str(sft_dir / "data.json"),
                           "--output_path", str(out)])
    assert not out.exists()


def test_readme_fine_tuning_commands_run(fixtures_dir, sft_dir, image_area, tmp_path):
    """The README's Fine-tuning commands (prepare_data, then train_sft in one process) as written, in a scratch
    folder, with the fixture folder the README names swapped for this run's (and, for another fixture configuration
    than the public one, its image area and longest sample)."""
    longest = int(np.load(sft_dir / "dataset_refs.npz")["model_max_length"])
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Fine-tuning"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.startswith("python paddlemix/")]
    assert [c.split()[1] for c in commands[:2]] == ["paddlemix/examples/emu3/prepare_data.py",
                                                    "paddlemix/examples/emu3/train_sft.py"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for command in commands[:2]:
        argv = command.replace("../shared/fixtures/public", str(fixtures_dir)).split()
        for flag, value in (("--image_area", image_area), ("--max_position_embeddings", longest)):
            if flag in argv:
                argv[argv.index(flag) + 1] = str(value)
        res = subprocess.run([sys.executable, str(REPO_ROOT / argv[1])] + argv[2:], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (command, res.stderr[-3000:])
    assert "trained 3 steps" in res.stdout
    assert (tmp_path / "sft_out" / "model.safetensors").is_file()
