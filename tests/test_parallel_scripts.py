"""The example scripts unchanged under ``python -m paddle.distributed.launch --nproc_per_node 2`` (gloo, CPU):
tensor parallel gives the original's images and answers, data parallel gives the one-process outputs, rank 0 alone
prints, and each output is written once."""

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from launch_util import REPO, launch

SCRIPTS = pathlib.Path(REPO) / "paddlemix" / "examples" / "emu3"


def worker_logs(log_dir):
    return [(log_dir / f"workerlog.{r}").read_text(encoding="utf-8", errors="replace") for r in range(2)]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_generation_tensor_parallel_gives_the_original_images(fixtures_dir, tmp_path):
    code, log = launch([SCRIPTS / "run_generation_inference.py", "--demo", fixtures_dir, "--prompt",
                        "a portrait of young girl.", "--prompt", "a shiba inu", "--ratio", "1:1", "--ratio", "16:9",
                        "--greedy", "--output_dir", tmp_path / "out"], tmp_path / "log")
    assert code == 0, log
    ref = np.load(fixtures_dir / "refs" / "gen_t2i_batch.npz")
    assert sorted(os.listdir(tmp_path / "out")) == ["emu3_t2i_00.png", "emu3_t2i_01.png"]
    for b in range(2):
        got, want = pixels(tmp_path / "out" / f"emu3_t2i_{b:02d}.png"), ref[f"decoded_image_uint8_{b}"]
        assert got.shape == want.shape and np.abs(got - want).max() <= 1
    rank0, rank1 = worker_logs(tmp_path / "log")
    assert "tensor parallel rank 0 of 2" in rank0 and rank0.count("wrote ") == 2
    assert "wrote " not in rank1 and "Emu3 generate" not in rank1  # no prints, no progress bar


def test_generation_data_parallel_equals_one_process(fixtures_dir, tmp_path):
    from paddlemix.examples.emu3.run_generation_inference import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a portrait of young girl.\na shiba inu\t16:9\n\na red fox\t3:4\n", encoding="utf-8")
    args = ["--demo", fixtures_dir, "--prompts_file", prompts, "--seed", "11", "--top_k", "50", "--threads", "1"]
    code, log = launch([SCRIPTS / "run_generation_inference.py", *args, "--parallel", "data", "--output_dir",
                        tmp_path / "dp"], tmp_path / "log")
    assert code == 0, log
    assert main([str(a) for a in args] + ["--output_dir", str(tmp_path / "one")]) == 0
    names = ["emu3_t2i_00.png", "emu3_t2i_01.png", "emu3_t2i_02.png"]
    assert sorted(os.listdir(tmp_path / "dp")) == sorted(os.listdir(tmp_path / "one")) == names
    for name in names:
        np.testing.assert_array_equal(pixels(tmp_path / "dp" / name), pixels(tmp_path / "one" / name))
    assert pixels(tmp_path / "one" / names[2]).shape[0] > pixels(tmp_path / "one" / names[2]).shape[1]  # 3:4
    rank0, rank1 = worker_logs(tmp_path / "log")
    assert rank0.count("wrote ") == 3 and "wrote " not in rank1


def vqa_args(fixtures_dir, case):
    ref = np.load(fixtures_dir / "refs" / f"gen_vqa_{case}.npz")
    inputs = np.load(fixtures_dir / "refs" / f"processor_U_{case}.npz")
    args = ["--model_path", fixtures_dir / "llm", "--vq_model_path", fixtures_dir / "vision_tokenizer",
            "--tokenizer_path", fixtures_dir / "tokenizer", "--max_new_tokens", ref["new_tokens"].shape[1],
            "--dtype", "float32"]
    for name, question in zip(inputs["image_names"], inputs["text"]):
        args += ["--image_path", fixtures_dir / "inputs" / f"{name}.png", "--question", str(question)]
    return args, [str(a) for a in ref["answers_skip_special"]]


def answers(text, count):
    found = []
    for i in range(count):
        start = text.index(f"Answer {i}: ") + len(f"Answer {i}: ")
        found.append(text[start:text.index("\n", start)])
    return found


@pytest.mark.parametrize("mode, case", [("tensor", "batch"), ("data", "single")])
def test_understanding_gives_the_original_answers(fixtures_dir, tmp_path, mode, case):
    args, want = vqa_args(fixtures_dir, case)
    code, log = launch([SCRIPTS / "run_understanding_inference.py", *args, "--parallel", mode], tmp_path / "log")
    assert code == 0, log
    rank0, rank1 = worker_logs(tmp_path / "log")
    assert answers(rank0, len(want)) == want
    assert "Answer 0" not in rank1
    if case == "single":  # one question over two processes: rank 1 idles, and rank 0 says so
        assert "ranks 1..1 have nothing to do and stay idle" in rank0


def test_autoencode_shares_the_images(fixtures_dir, tmp_path):
    inputs = fixtures_dir / "inputs"
    code, log = launch([SCRIPTS / "autoencode.py", "--model_path", fixtures_dir / "vision_tokenizer", "--image_path",
                        inputs, "--output_dir", tmp_path / "out"], tmp_path / "log")
    assert code == 0, log
    rank0, rank1 = worker_logs(tmp_path / "log")
    names = sorted(p.stem for p in inputs.glob("*.png"))
    assert rank0.count("PSNR") == len(names) and "PSNR" not in rank1
    assert sorted(os.listdir(tmp_path / "out")) == [f"{n}_recon.png" for n in names]
    for path in sorted((fixtures_dir / "refs").glob("vq_img_*.npz")):
        name, ref = path.stem[len("vq_"):], np.load(path)
        assert np.abs(pixels(tmp_path / "out" / f"{name}_recon.png") - ref["recon_uint8"].astype(np.int16)).max() <= 1


def test_prompts_file_arguments(fixtures_dir, tmp_path, capsys):
    from paddlemix.examples.emu3.run_generation_inference import parse_args

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na red fox\t16:9\n", encoding="utf-8")
    args = parse_args(["--demo", str(fixtures_dir), "--prompts_file", str(prompts), "--ratio", "3:4"])
    assert args.prompt == ["a cat", "a red fox"] and args.ratio == ["3:4", "16:9"]
    for argv, message in [(["--prompts_file", str(prompts), "--prompt", "x"], "--prompts_file replaces --prompt"),
                          (["--prompts_file", str(tmp_path / "none.txt")], "is not a file"),
                          ([], "give --prompt (repeatable) or --prompts_file")]:
        with pytest.raises(SystemExit):
            parse_args(["--demo", str(fixtures_dir), *argv])
        assert message in capsys.readouterr().err
