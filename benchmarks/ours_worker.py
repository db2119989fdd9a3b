"""Our side of the benchmarks: this package on Paddle (CPU), run in the package's environment.

Usage (run.py does this): ``python ours_worker.py JOB.json RESULT.json``. Jobs:

* ``make_weights``: random weights for a config, written by our ``save_pretrained`` in the original key layout.
* ``map_keys``: {transformers key: original key} through our models' documented ``_map_checkpoint_key``.
* ``vq``, ``lm``, ``t2i``, ``vqa``, ``memory``, ``train``: the benchmark cases (the same work as ref_worker.py).
* ``make_real8b``: a random bf16 checkpoint of an LM config in the original layout and sharding, written tensor by
  tensor (random_checkpoint.py); ``real8b``: that checkpoint loaded with bf16 or int8 weights (the job's
  ``variant``): load time and peak RSS, a VQA prefill, decode steps at each batch size against the floor.
* ``serve``: the server under client-side load (serve_bench.py; our side only).
* ``parallel``: the batch-1 decode step under the launch it runs in (tensor parallel over its processes) and the
  weight bytes this rank reads per step.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def model_class(kind):
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
    from paddlemix.models.emu3.modeling_emu3visionvq import Emu3VisionVQModel

    return {"vq": Emu3VisionVQModel, "lm": Emu3ForCausalLM}[kind]


def set_threads(threads):
    import paddle

    paddle.base.core.set_num_threads(threads)


def load(job, **overrides):
    return model_class(job["model"]).from_pretrained(job["orig_dir"], **overrides)


def job_make_weights(job):
    """Weights N(0, 1/fan_in) (fan_in = input features, or in_channels x kernel size), embeddings and the codebook
    N(0, 1), norm scales 1 + N(0, 0.02), biases N(0, 0.02), BatchNorm statistics mean 0 / variance 1: logits and
    activations stay in a sane range, so neither side runs into degenerate (NaN, denormal) arithmetic."""
    import numpy as np
    import paddle
    from paddle import nn

    set_threads(job["threads"])
    cls = model_class(job["model"])
    config = cls.config_class.from_dict(job["config"])
    rng = np.random.default_rng(job["seed"])
    with paddle.LazyGuard():
        model = cls(config)
    linear = model._linear_weight_names()
    embeddings = {f"{p}.weight" for p, layer in model.named_sublayers() if isinstance(layer, nn.Embedding)}
    for name, param in model.state_dict().items():
        shape = list(param.shape)
        if name.endswith("._mean"):
            arr = np.zeros(shape, np.float32)
        elif name.endswith("._variance"):
            arr = np.ones(shape, np.float32)
        elif name in embeddings:
            arr = rng.standard_normal(shape, dtype=np.float32)
        elif name in linear:
            arr = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[0]))
        elif len(shape) >= 2:
            arr = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(np.prod(shape[1:])))
        elif name.endswith("bias"):
            arr = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        else:
            arr = 1.0 + 0.02 * rng.standard_normal(shape, dtype=np.float32)
        param.set_value(paddle.to_tensor(arr.astype(str(param.dtype).replace("paddle.", ""))))
    model.save_pretrained(job["orig_dir"])
    return {"parameters": int(sum(int(np.prod(p.shape)) for p in model.parameters()))}


def job_map_keys(job):
    cls = model_class(job["model"])
    mapping = {}
    for key in job["hf_keys"]:
        orig = cls._map_checkpoint_key(key)
        if orig is not None:
            mapping[key] = orig
    return {"mapping": mapping}


def job_vq(job):
    """Per size: an untimed encode+decode at that shape first if it is in warm_sizes (first calls at a shape build
    kernels; the largest size is left out to save time, its kernel set-up is small against its run), then the timed runs."""
    import paddle

    set_threads(job["threads"])
    model = load(job)
    res = {}
    with paddle.no_grad():
        for size in job["sizes"]:
            img = paddle.to_tensor(common.test_image(size))
            if size in job["warm_sizes"]:
                model.decode(model.encode(img))
            t_enc, codes = common.timed(lambda: model.encode(img).numpy(), job["repeats"])
            codes_t = paddle.to_tensor(codes)
            t_dec, _ = common.timed(lambda: model.decode(codes_t).numpy(), job["repeats"])
            res[f"encode {size}"] = t_enc
            res[f"decode {size}"] = t_dec
            res[f"codes {size}"] = codes.flatten().tolist()
    return res


def _generate(model, ids, **kwargs):
    import paddle

    out = model.generate(paddle.to_tensor(ids, dtype="int64"), progress=False, **kwargs)
    return out.numpy() if hasattr(out, "numpy") else out


def _decode_timings(model, prompts, job):
    """common.decode_timing of greedy generation after each batch size's prompt ({batch: ids [batch, L]}), with the
    new token ids of each as a flat list."""
    res = {}
    for batch in job["decode_batches"]:
        prompt = prompts[batch]

        def gen(n):
            return _generate(model, prompt, max_new_tokens=n, do_sample=False)

        gen(2)
        timing = common.decode_timing(gen, job, batch)
        timing[f"ids b{batch}"] = timing[f"ids b{batch}"][:, prompt.shape[1]:].flatten().tolist()
        res.update(timing)
    return res


def job_lm(job):
    import paddle

    set_threads(job["threads"])
    model = load(job)
    res = {}
    prefill, prompts = common.lm_prompts(job)
    with paddle.no_grad():
        if job["prefill_len"]:
            ids = paddle.to_tensor(prefill, dtype="int64")
            model(ids[:, :16])
            res["prefill"], _ = common.timed(lambda: model(ids).logits[:, -1].numpy(), job["repeats"])
        res.update(_decode_timings(model, prompts, job))
    return res


def job_t2i(job):
    set_threads(job["threads"])
    model = load(job)
    height, width = job["t2i_grid"]
    pos = [common.t2i_prompt(job, False)]
    neg = [common.t2i_prompt(job, True)]
    res = {}
    n_tokens = common.grid_tokens(height, width)
    for mode in job["t2i_modes"]:
        kwargs = {"do_sample": False} if mode == "greedy" else {"do_sample": True, "top_k": job["top_k"], "seed": 0}
        t0 = time.perf_counter()
        out = _generate(
            model, pos, negative_prompt_ids=_tensor(neg), guidance_scale=job["guidance_scale"],
            image_size=(height, width), max_new_tokens=n_tokens, **kwargs,
        )
        seconds = time.perf_counter() - t0
        generated = out.shape[1] - len(pos[0])
        if generated != n_tokens:
            raise RuntimeError(f"our t2i generated {generated} tokens, expected {n_tokens}")
        res[f"t2i {mode}"] = seconds
        res[f"t2i {mode} tokens"] = generated
        res[f"t2i {mode} ids"] = out[0, len(pos[0]):].tolist()
    return res


def _tensor(ids):
    import paddle

    return paddle.to_tensor(ids, dtype="int64")


def job_vqa(job):
    set_threads(job["threads"])
    model = load(job)
    ids = [common.vqa_prompt(job)]
    _generate(model, [ids[0][:32]], max_new_tokens=2, do_sample=False)
    t0 = time.perf_counter()
    out = _generate(model, ids, max_new_tokens=job["vqa_new_tokens"], do_sample=False)
    seconds = time.perf_counter() - t0
    return {"vqa": seconds, "vqa prompt": len(ids[0]), "vqa tokens": out.shape[1] - len(ids[0]),
            "vqa ids": out[0, len(ids[0]):].tolist()}


def job_memory(job):
    import paddle

    set_threads(job["threads"])
    cls = model_class(job["model"])
    base = common.rss_kib("VmRSS")
    model = cls.from_pretrained(job["orig_dir"])
    load_peak = common.rss_kib("VmHWM")
    with paddle.no_grad():
        model(paddle.arange(16, dtype="int64").unsqueeze(0) % job["text_vocab"])
    return {
        "baseline_kib": base,
        "load_peak_kib": load_peak,
        "use_peak_kib": common.rss_kib("VmHWM"),
        "use_rss_kib": common.rss_kib("VmRSS"),
    }


def job_make_real8b(job):
    """The keys and PyTorch-layout shapes come from our model built lazily (no memory): the original layout."""
    import paddle
    from random_checkpoint import write_random_checkpoint

    cls = model_class("lm")
    with paddle.LazyGuard():
        model = cls(cls.config_class.from_dict(job["config"]))
    linear = model._linear_weight_names()
    tensors = [(model._paddle_to_original_name(name), list(p.shape)[::-1] if name in linear else list(p.shape))
               for name, p in model.state_dict().items()]
    total = write_random_checkpoint(tensors, job["orig_dir"], seed=0)
    model.config.save_pretrained(job["orig_dir"])
    return {"bytes": total}


def job_real8b(job):
    """Load (time, peak RSS), the VQA prompt's prefill (generate one token: the lm_head runs on the last position
    only, as in transformers' generate), then decode steps per batch size (common.decode_timing: generate(n + 1) -
    generate(1) with the copy bandwidth measured around the batch-1 timing). step_bytes: the weights a decode step
    reads (all but the embedding) as stored."""
    import numpy as np
    import paddle

    set_threads(job["threads"])
    base = common.rss_kib("VmRSS")
    t0 = time.perf_counter()
    model = model_class("lm").from_pretrained(
        job["orig_dir"], dtype="bfloat16", quant_type=None if job["variant"] == "bfloat16" else job["variant"]
    )
    res = {"load": time.perf_counter() - t0, "baseline_kib": base, "load_peak_kib": common.rss_kib("VmHWM")}
    res["stored"] = str(model.model.layers[0]._step_weights()[1].dtype)  # q_proj's weight, as stored
    res["step_bytes"] = sum(int(np.prod(p.shape)) * p.element_size() for name, p in model.state_dict().items()
                            if "embed_tokens" not in name)
    ids = common.vqa_prompt(job)
    with paddle.no_grad():
        _generate(model, [ids[:32]], max_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        _generate(model, [ids], max_new_tokens=1, do_sample=False)
        res["prefill"], res["prefill tokens"] = time.perf_counter() - t0, len(ids)
        rng = np.random.default_rng(3)
        prompts = {b: rng.integers(0, job["text_vocab"], (b, job["decode_prompt_len"])) for b in job["decode_batches"]}
        res.update(_decode_timings(model, prompts, job))
    res["peak_kib"] = common.rss_kib("VmHWM")
    return res


def job_serve(job):
    from serve_bench import job_serve as run

    set_threads(job["threads"])
    return run(job)
def job_parallel(job):
    import numpy as np
    import paddle

    set_threads(job["threads"])
    model = load(job)  # tensor-parallel degree and rank from the launch (1 and 0 outside one)
    prompt = common.lm_prompts(job)[1][1]
    embed = model.model.embed_tokens.weight
    res = {"step_bytes": sum(int(np.prod(p.shape)) * 4 for p in model.parameters() if p is not embed)}
    with paddle.no_grad():
        def gen(n):
            return _generate(model, prompt, max_new_tokens=n, do_sample=False)

        gen(2)
        timing = common.decode_timing(gen, job, 1)
    res["decode step b1"] = timing["decode step b1"]
    res["ids b1"] = timing["ids b1"][:, prompt.shape[1]:].flatten().tolist()
    return res


    return res


def job_train(job):
    """One optimizer step of a plain training loop, the same work as the reference's: forward with labels (the
    model's chunked float32 loss), backward, the trainer's AdamW (``build_optimizer``: paddle.optimizer.AdamW, no
    decay on the RMSNorm weights) with the reference's hyper-parameters, gradients released after the step (as
    torch's zero_grad does; Paddle's default clear_grad keeps them allocated and zeroed, one more parameter-size of
    memory during the next forward); recompute per decoder layer with job["recompute"]; the model's
    attention_dropout set to job["attention_dropout"]."""
    import paddle

    from paddlemix.trainer.optimization import build_optimizer

    set_threads(job["threads"])
    base = common.rss_kib("VmRSS")
    model = load(job, attention_dropout=job["attention_dropout"])
    model.train()
    if job["recompute"]:
        model.gradient_checkpointing_enable()
    optimizer, _, _ = build_optimizer(model, 1e-5, 0.1, (0.9, 0.95), 1e-6)
    ids = paddle.to_tensor(common.train_batch(job))

    def forward():
        return model(ids, labels=ids).loss

    def update(loss):
        loss.backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        return float(loss)

    res = common.train_timing(forward, update, job)
    res["baseline_kib"] = base
    return res


def run_job(job):
    import numpy as np

    result = {
        "make_weights": job_make_weights,
        "map_keys": job_map_keys,
        "vq": job_vq,
        "lm": job_lm,
        "t2i": job_t2i,
        "vqa": job_vqa,
        "memory": job_memory,
        "train": job_train,
        "make_real8b": job_make_real8b,
        "real8b": job_real8b,
        "serve": job_serve,
        "parallel": job_parallel,
    }[job["job"]](job)
    import paddle

    from paddlemix import ops

    cpu_ops = ops.report()["cpu"]
    result["_versions"] = {
        "numpy": np.__version__,
        "paddle": paddle.__version__,
        "paddlemix ops (CPU)": ", ".join(f"{k}: {v}" for k, v in sorted(cpu_ops.items())),
    }
    return result


if __name__ == "__main__":
    common.main_worker(run_job)
