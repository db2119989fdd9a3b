"""Tensor-parallel language model over 2 CPU processes (gloo): one launch of tests/parallel_worker.py, whose results
are checked here against the original's references (gen_*.npz, llm_forward_U_batch.npz) and against one process."""

import json
import os
import shutil

import numpy as np
import paddle
import pytest

from launch_util import launch
from paddlemix.models.emu3.configuration_emu3 import Emu3Config
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.models.tensor_parallel import bounds, shares

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parallel_worker.py")


def tiny_config(fixtures_dir):
    """The fixture's special ids, but a vocabulary (789) and an MLP width (77) that 2 does not divide."""
    cfg = Emu3Config.from_pretrained(str(fixtures_dir / "llm"))
    cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size = 789, 48, 77
    cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2
    return cfg


def expected_rank_bytes(cfg, rank, degree=2):
    """float32 bytes of one rank's parameters, written out from the split rules (heads whole, sizes that do not
    divide: the first ranks one row more), independently of the package's plan."""
    h, d = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads

    def part(n):
        return n // degree + (rank < n % degree)

    per_layer = (
        h * d * cfg.num_attention_heads // degree * 2  # q, o
        + h * d * cfg.num_key_value_heads // degree * 2  # k, v
        + h * part(cfg.intermediate_size) * 3  # gate, up, down
        + 2 * h  # the two norms, replicated
    )
    return 4 * (2 * part(cfg.vocab_size) * h + cfg.num_hidden_layers * per_layer + h)


@pytest.fixture(scope="module")
def results(fixtures_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp")
    paddle.seed(0)
    tiny = Emu3ForCausalLM(tiny_config(fixtures_dir))
    for p in tiny.parameters():
        p.set_value(paddle.randn(p.shape) * 0.2)
    tiny.save_pretrained(str(tmp / "tiny"))
    shutil.copytree(tmp / "tiny", tmp / "other")
    out = tmp / "out"
    out.mkdir()
    code, log = launch([WORKER, fixtures_dir, out, tmp / "tiny", tmp / "other"], tmp / "log")
    assert code == 0, log
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    errors = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, errors, str(tmp / "tiny")


@pytest.fixture(scope="module")
def single(fixtures_dir):
    return Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"))


def test_greedy_tokens_equal_the_original(results, fixtures_dir):
    ranks, _, _ = results
    t2i = np.load(fixtures_dir / "refs" / "gen_t2i_batch.npz")
    vqa = np.load(fixtures_dir / "refs" / "gen_vqa_batch.npz")
    for res in ranks:
        np.testing.assert_array_equal(res["t2i_greedy"], t2i["sequences"])
        np.testing.assert_array_equal(res["vqa_greedy"], vqa["sequences"])


def test_last_logits_match_the_original(results, fixtures_dir):
    ranks, _, _ = results
    ref = np.load(fixtures_dir / "refs" / "llm_forward_U_batch.npz")["last_logits"]
    for res in ranks:
        for key in ("last_logits", "hf_last_logits"):  # the original layout and transformers' -hf folder
            assert res[key].shape == ref.shape
            np.testing.assert_allclose(res[key], ref, atol=1e-4, rtol=0)


def test_sampling_equals_one_process(results, single, fixtures_dir):
    ranks, _, _ = results
    t2i = np.load(fixtures_dir / "refs" / "gen_t2i_batch.npz")
    kwargs = dict(attention_mask=t2i["attention_mask"], negative_prompt_ids=t2i["neg_input_ids"], guidance_scale=3.0,
                  image_size=t2i["image_size"], do_sample=True, top_k=100, progress=False)
    want = single.generate(t2i["input_ids"], seed=7, **kwargs).numpy()
    assert not np.array_equal(want, t2i["sequences"])  # sampling took other tokens than greedy
    # one seed per row: each row samples as it does alone
    rows = [single.generate(t2i["input_ids"][b:b + 1], seed=[70 + b],
                            **{**kwargs, "attention_mask": t2i["attention_mask"][b:b + 1],
                               "negative_prompt_ids": t2i["neg_input_ids"][b:b + 1],
                               "image_size": t2i["image_size"][b:b + 1]}).numpy()[0] for b in range(2)]
    for res in ranks:
        np.testing.assert_array_equal(res["t2i_sampled"], want)
        prompt = t2i["input_ids"].shape[1]
        for b in range(2):
            new = rows[b][prompt:]
            np.testing.assert_array_equal(res["t2i_row_seeds"][b, prompt:prompt + len(new)], new)
    # without a seed the ranks still agree (rank 0's uniforms)
    np.testing.assert_array_equal(ranks[0]["t2i_unseeded"], ranks[1]["t2i_unseeded"])


def test_each_rank_holds_its_share(results, single, fixtures_dir):
    ranks, _, tiny_dir = results
    cfg = single.config
    full = sum(int(np.prod(p.shape)) * 4 for p in single.parameters())
    for r, res in enumerate(ranks):
        assert int(res["param_bytes"]) == expected_rank_bytes(cfg, r)
        start, stop = bounds(cfg.vocab_size, 2, r)
        assert int(res["lm_head_cols"]) == int(res["embed_rows"]) == stop - start == [394, 393][r]
    replicated = 4 * cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)
    assert sum(int(res["param_bytes"]) for res in ranks) == full + replicated
    tiny_cfg = Emu3Config.from_pretrained(tiny_dir)
    for r, res in enumerate(ranks):
        assert int(res["tiny_param_bytes"]) == expected_rank_bytes(tiny_cfg, r)
        assert int(res["tiny_lm_head_cols"]) == shares(789, 2)[r] == [395, 394][r]


def test_uneven_split_equals_one_process(results):
    ranks, _, tiny_dir = results
    model = Emu3ForCausalLM.from_pretrained(tiny_dir)
    ids = np.array([[3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41]], dtype=np.int64)
    with paddle.no_grad():
        want = model(ids).logits.numpy()
    tokens = model.generate(ids, max_new_tokens=6, progress=False).numpy()
    for res in ranks:
        np.testing.assert_allclose(res["tiny_logits"], want, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(res["tiny_tokens"], tokens)


def test_clear_errors(results):
    _, errors, _ = results
    for err in errors:
        assert "does not divide num_key_value_heads 1" in err["kv_heads"]
        assert "does not divide num_attention_heads 3" in err["heads"]
        assert "disagree on the model path" in err["paths"] and "rank 1" in err["paths"]
        assert "inference only" in err["train"] and "tensor_parallel_degree=1" in err["train"]


def test_degree_without_a_launch_is_refused(fixtures_dir):
    with pytest.raises(ValueError, match="needs a launch of 2 processes"):
        Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"), tensor_parallel_degree=2, tensor_parallel_rank=0)
    with pytest.raises(ValueError, match="tensor_parallel_rank must be in"):
        Emu3ForCausalLM.from_pretrained(str(fixtures_dir / "llm"), tensor_parallel_degree=2, tensor_parallel_rank=2)


@pytest.mark.parametrize("bf16", [False, True])
def test_slice_reader_reads_only_the_rank_rows(tmp_path, monkeypatch, bf16):
    """model_utils._read_tensor with a tensor-parallel part: numpy's slice of the checkpoint tensor (transposed for a
    Linear), in 64-row blocks; a row slice touches (releases) only its own rows' bytes."""
    from paddlemix.models import model_utils
    from paddlemix.models.safetensors_io import SafetensorsFile, bf16_to_f32, f32_to_bf16, save_file

    rng = np.random.default_rng(1)
    full = rng.standard_normal((301, 70)).astype(np.float32)  # checkpoint layout [out, in]
    stored = f32_to_bf16(full) if bf16 else full
    save_file({"w": stored}, str(tmp_path / "m.safetensors"), {"format": "pt"}, {"w"} if bf16 else set())
    want_full = bf16_to_f32(f32_to_bf16(full)) if bf16 else full
    monkeypatch.setattr(model_utils, "_CHUNK_BYTES", 64 * 70 * stored.itemsize)
    st = SafetensorsFile(str(tmp_path / "m.safetensors"))
    released = []
    monkeypatch.setattr(st, "release", lambda key, a, b: released.append((a, b)))
    row_bytes = 70 * stored.itemsize
    try:
        for (axis, start, stop), transpose in [((0, 151, 301), True), ((1, 35, 70), True), ((0, 0, 151), False)]:
            released.clear()
            part = want_full[start:stop] if axis == 0 else want_full[:, start:stop]
            shape = list(part.T.shape if transpose else part.shape)
            got = model_utils._read_tensor(st, "w", shape, "float32", transpose, (axis, start, stop))
            np.testing.assert_array_equal(got, part.T if transpose else part)
            if axis == 0:
                assert released[0][0] == start * row_bytes and all(a < stop * row_bytes for a, _ in released)
    finally:
        st.close()


def test_launch_environment_helpers(tmp_path, monkeypatch):
    from paddlemix import distributed

    assert [list(distributed.share(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(distributed.share(1, r, 2)) for r in range(2)] == [[0], []]
    assert shares(787, 2) == [394, 393] and shares(8, 4) == [2, 2, 2, 2] and bounds(10, 3, 2) == (7, 10)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")
    assert distributed.cpu_share() == max(1, cpus // 2)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "two")
    with pytest.raises(ValueError, match="PADDLE_TRAINERS_NUM='two' is not an integer"):
        distributed.world()

    good = tmp_path / "prompts.txt"
    good.write_text("a cat\n\n  \na red fox\t16:9\r\n", encoding="utf-8")
    assert distributed.read_prompts_file(str(good)) == [("a cat", None), ("a red fox", "16:9")]
    for text, message in [("a cat\t16-9\n", "line 1: ratio '16-9' is not W:H"), ("\t1:1\n", "line 1: empty prompt"),
                          ("\n\n", "holds no prompts"), ("x\t0:1\n", "ratio '0:1'")]:
        good.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            distributed.read_prompts_file(str(good))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        distributed.read_prompts_file(str(tmp_path / "missing.txt"))
