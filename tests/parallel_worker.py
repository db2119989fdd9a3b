"""One rank of the tensor-parallel tests (tests/test_parallel.py starts two under paddle.distributed.launch).

usage: parallel_worker.py FIXTURES OUT TINY_DIR OTHER_DIR
Each rank writes OUT/rank<r>.npz (tokens, logits, parameter bytes) and OUT/rank<r>.json (error messages); the test
compares them with the original's references and with one process.
"""

import json
import os
import sys

import numpy as np
import paddle

from paddlemix.distributed import world
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM


def param_bytes(model):
    return sum(int(np.prod(p.shape)) * 4 for p in model.parameters())


def error_of(fn):
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def main(fixtures, out, tiny, other):
    rank, _ = world()
    refs = os.path.join(fixtures, "refs")
    res, errors = {}, {}
    # errors raised before any weight is read (the degree is checked before the process group is used)
    errors["kv_heads"] = error_of(lambda: Emu3ForCausalLM.from_pretrained(tiny, num_key_value_heads=1))
    errors["heads"] = error_of(lambda: Emu3ForCausalLM.from_pretrained(tiny, num_attention_heads=3,
                                                                      num_key_value_heads=1))
    errors["paths"] = error_of(lambda: Emu3ForCausalLM.from_pretrained(tiny if rank == 0 else other))

    model = Emu3ForCausalLM.from_pretrained(os.path.join(fixtures, "llm"))  # degree and rank from the launch
    res["param_bytes"] = param_bytes(model)
    res["lm_head_cols"] = model.lm_head.weight.shape[1]
    res["embed_rows"] = model.model.embed_tokens.weight.shape[0]

    t2i = np.load(os.path.join(refs, "gen_t2i_batch.npz"))
    kwargs = dict(attention_mask=t2i["attention_mask"], negative_prompt_ids=t2i["neg_input_ids"], guidance_scale=3.0,
                  image_size=t2i["image_size"], progress=False)
    res["t2i_greedy"] = model.generate(t2i["input_ids"], **kwargs).numpy()
    res["t2i_sampled"] = model.generate(t2i["input_ids"], do_sample=True, top_k=100, seed=7, **kwargs).numpy()
    res["t2i_row_seeds"] = model.generate(t2i["input_ids"], do_sample=True, top_k=100, seed=[70, 71],
                                          **kwargs).numpy()
    res["t2i_unseeded"] = model.generate(t2i["input_ids"], do_sample=True, **kwargs).numpy()
    vqa = np.load(os.path.join(refs, "gen_vqa_batch.npz"))
    res["vqa_greedy"] = model.generate(vqa["input_ids"], attention_mask=vqa["attention_mask"],
                                       max_new_tokens=vqa["new_tokens"].shape[1], progress=False).numpy()
    fwd = np.load(os.path.join(refs, "llm_forward_U_batch.npz"))
    with paddle.no_grad():
        res["last_logits"] = model(fwd["input_ids"], attention_mask=fwd["attention_mask"]).logits.numpy()[:, -1]
    del model
    hf_folder = os.path.join(os.path.dirname(os.path.abspath(fixtures)), "public_hf")  # transformers' -hf layout
    with paddle.no_grad():
        res["hf_last_logits"] = Emu3ForCausalLM.from_pretrained(hf_folder)(
            fwd["input_ids"], attention_mask=fwd["attention_mask"]).logits.numpy()[:, -1]

    # a vocabulary, intermediate size the degree does not divide: the split is uneven
    tiny_tp = Emu3ForCausalLM.from_pretrained(tiny)
    res["tiny_param_bytes"] = param_bytes(tiny_tp)
    res["tiny_lm_head_cols"] = tiny_tp.lm_head.weight.shape[1]
    ids = np.array([[3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41]], dtype=np.int64) % tiny_tp.config.vocab_size
    with paddle.no_grad():
        res["tiny_logits"] = tiny_tp(ids).logits.numpy()
    res["tiny_tokens"] = tiny_tp.generate(ids, max_new_tokens=6, progress=False).numpy()
    tiny_tp.train()
    errors["train"] = error_of(lambda: tiny_tp(ids))
    np.savez(os.path.join(out, f"rank{rank}.npz"), **res)
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(errors, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
