"""Reference side of the benchmarks: transformers' Emu3 port on PyTorch (CPU), run in benchmarks/.ref_venv.

Usage (run.py does this): ``.ref_venv/bin/python ref_worker.py JOB.json RESULT.json``. Jobs:

* ``hf_keys``: the state-dict keys and shapes of transformers' model for a config (to build the key mapping).
* ``convert``: write a transformers-layout folder from our original-layout checkpoint and the key mapping
  {transformers key: original key} that our package documents (its ``_map_checkpoint_key``).
* ``vq``, ``lm``, ``t2i``, ``vqa``, ``memory``, ``train``: the benchmark cases; each returns {metric: value}.
* ``link_real8b``: a transformers-layout folder for a sharded original checkpoint whose key mapping is the identity
  (config.json written, the shards and index linked); ``real8b``: it loaded with ``dtype=torch.bfloat16``, timed as
  ours_worker.job_real8b.

Config field names follow transformers 5.x (checked against the installed package): Emu3VQVAEConfig uses
base_channels / channel_multiplier / latent_channels / double_latent and sizes its attention by hidden_size;
Emu3TextConfig takes the rope base in rope_parameters.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def hf_vq_config(cfg):
    from transformers import Emu3VQVAEConfig

    return Emu3VQVAEConfig(
        codebook_size=cfg["codebook_size"],
        embed_dim=cfg["embed_dim"],
        latent_channels=cfg["z_channels"],
        double_latent=cfg["double_z"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        temporal_downsample_factor=cfg["temporal_downsample_factor"],
        base_channels=cfg["ch"],
        channel_multiplier=list(cfg["ch_mult"]),
        num_res_blocks=cfg["num_res_blocks"],
        attn_resolutions=list(cfg["attn_resolutions"]),
        # transformers sizes every VQ attention block by hidden_size: the channels of the deepest level
        hidden_size=cfg["ch"] * cfg["ch_mult"][-1],
        num_attention_heads=1,
    )


def hf_text_config(cfg):
    from transformers import Emu3TextConfig

    return Emu3TextConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]},
        pad_token_id=cfg["pad_token_id"],
        bos_token_id=cfg["bos_token_id"],
        eos_token_id=cfg["eos_token_id"],
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )


def model_class(kind):
    from transformers import Emu3ForCausalLM, Emu3VQVAE

    return {"vq": Emu3VQVAE, "lm": Emu3ForCausalLM}[kind]


def hf_config(kind, cfg):
    return hf_vq_config(cfg) if kind == "vq" else hf_text_config(cfg)


def load(job, **overrides):
    import torch

    model = model_class(job["model"]).from_pretrained(job["hf_dir"], dtype=torch.float32, **overrides)
    model.eval()
    return model


def job_hf_keys(job):
    import torch

    with torch.device("meta"):
        model = model_class(job["model"])(hf_config(job["model"], job["config"]))
    return {"keys": {k: list(v.shape) for k, v in model.state_dict().items()}}


def job_convert(job):
    """transformers-layout folder: config.json, and the weights renamed (reshaped where only size-1 axes differ).

    When the mapping is the identity and no tensor needs reshaping, the original file is linked instead of copied,
    so that loading it is exactly loading the original file."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    os.makedirs(job["hf_dir"], exist_ok=True)
    hf_config(job["model"], job["config"]).save_pretrained(job["hf_dir"])
    src = os.path.join(job["orig_dir"], "model.safetensors")
    dst = os.path.join(job["hf_dir"], "model.safetensors")
    mapping, shapes = job["mapping"], job["hf_shapes"]
    out = {}
    with safe_open(src, "np") as f:
        have = set(f.keys())
        # BatchNorm's step counter is not part of our layout (it only matters in training): a zero fills it
        counters = {k for k, v in mapping.items() if v not in have and v.endswith(".num_batches_tracked")}
        missing = sorted(v for k, v in mapping.items() if v not in have and k not in counters)
        if missing:
            raise KeyError(f"original checkpoint lacks keys the mapping names: {missing[:10]}")
        identity = all(k == v for k, v in mapping.items()) and len(mapping) == len(have) and not counters
        reshaped = False
        for hf_key, orig_key in mapping.items():
            if hf_key in counters:
                out[hf_key] = np.zeros(shapes[hf_key], np.int64)
                continue
            arr = f.get_tensor(orig_key)
            if list(arr.shape) != shapes[hf_key]:
                if arr.size != int(np.prod(shapes[hf_key])):
                    raise ValueError(f"{orig_key} {list(arr.shape)} cannot become {hf_key} {shapes[hf_key]}")
                arr = arr.reshape(shapes[hf_key])
                reshaped = True
            out[hf_key] = arr
    if os.path.lexists(dst):
        os.remove(dst)
    if identity and not reshaped:
        os.symlink(os.path.abspath(src), dst)
        return {"linked": True}
    save_file(out, dst, metadata={"format": "pt"})
    return {"linked": False}


def job_vq(job):
    """Per size: an untimed encode+decode at that shape first if it is in warm_sizes (first calls at a shape build
    kernels; the largest size is left out to save time, its kernel set-up is small against its run), then the timed runs."""
    import torch

    torch.set_num_threads(job["threads"])
    model = load(job)
    res = {}
    with torch.inference_mode():
        for size in job["sizes"]:
            img = torch.from_numpy(common.test_image(size))
            sizes = torch.tensor([[size, size]])
            if size in job["warm_sizes"]:
                model.decode(model.encode(img, sizes).image_tokens[0][None])
            t_enc, codes = common.timed(lambda: model.encode(img, sizes).image_tokens[0][None], job["repeats"])
            t_dec, _ = common.timed(lambda: model.decode(codes), job["repeats"])
            res[f"encode {size}"] = t_enc
            res[f"decode {size}"] = t_dec
            res[f"codes {size}"] = codes.flatten().tolist()
    return res


def job_lm(job):
    import torch

    torch.set_num_threads(job["threads"])
    model = load(job)
    res = {}
    prefill, prompts = common.lm_prompts(job)
    with torch.inference_mode():
        if job["prefill_len"]:
            ids = torch.from_numpy(prefill)
            model(input_ids=ids[:, :16])
            res["prefill"], _ = common.timed(
                lambda: model(input_ids=ids, use_cache=False).logits[:, -1], job["repeats"]
            )
        for batch in job["decode_batches"]:
            prompt = torch.from_numpy(prompts[batch])
            mask = torch.ones_like(prompt)

            def gen(n):
                return model.generate(
                    input_ids=prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                    pad_token_id=job["lm_config"]["pad_token_id"],
                )

            gen(2)
            timing = common.decode_timing(gen, job, batch)
            timing[f"ids b{batch}"] = timing[f"ids b{batch}"][:, prompt.shape[1]:].flatten().tolist()
            res.update(timing)
    return res


def job_t2i(job):
    import torch
    from transformers import LogitsProcessorList

    torch.set_num_threads(job["threads"])
    model = load(job)
    lm = job["lm_config"]
    height, width = job["t2i_grid"]
    first, codebook = job["first_visual_id"], job["codebook_size"]
    visual_tokens = list(range(first, first + codebook))
    pos = torch.tensor([common.t2i_prompt(job, False)])
    neg = torch.tensor([common.t2i_prompt(job, True)])

    def prefix_allowed_tokens_fn(batch_id, input_ids):
        # the grid rule of the official Emu3 example, written the same way (tensors built per call)
        image_wrapper_token_id = torch.tensor([lm["img_token_id"]])
        eoi_token_id = torch.tensor([lm["eoi_token_id"]])
        eos_token_id = torch.tensor([lm["eos_token_id"]])
        pad_token_id = torch.tensor([lm["pad_token_id"]])
        eof_token_id = torch.tensor([lm["eof_token_id"]])
        eol_token_id = torch.tensor([lm["eol_token_id"]])
        position = torch.nonzero(input_ids == image_wrapper_token_id, as_tuple=True)[0][0]
        offset = input_ids.shape[0] - position
        if offset % (width + 1) == 0:
            return (eol_token_id,)
        if offset == (width + 1) * height + 1:
            return (eof_token_id,)
        if offset == (width + 1) * height + 2:
            return (eoi_token_id,)
        if offset == (width + 1) * height + 3:
            return (eos_token_id,)
        if offset > (width + 1) * height + 3:
            return (pad_token_id,)
        return visual_tokens

    from transformers import PrefixConstrainedLogitsProcessor

    res = {}
    n_tokens = common.grid_tokens(height, width)
    for mode in job["t2i_modes"]:
        kwargs = {"do_sample": False} if mode == "greedy" else {"do_sample": True, "top_k": job["top_k"]}
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=pos,
                attention_mask=torch.ones_like(pos),
                negative_prompt_ids=neg,
                negative_prompt_attention_mask=torch.ones_like(neg),
                guidance_scale=job["guidance_scale"],
                logits_processor=LogitsProcessorList([PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn, 1)]),
                max_new_tokens=n_tokens,
                eos_token_id=lm["eos_token_id"],
                pad_token_id=lm["pad_token_id"],
                **kwargs,
            )
        seconds = time.perf_counter() - t0
        generated = out.shape[1] - pos.shape[1]
        if generated != n_tokens:
            raise RuntimeError(f"reference t2i generated {generated} tokens, expected {n_tokens}")
        res[f"t2i {mode}"] = seconds
        res[f"t2i {mode} tokens"] = generated
        res[f"t2i {mode} ids"] = out[0, pos.shape[1]:].tolist()
    return res


def job_vqa(job):
    import torch

    torch.set_num_threads(job["threads"])
    model = load(job)
    ids = torch.tensor([common.vqa_prompt(job)])
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :32], max_new_tokens=2, do_sample=False,
                       pad_token_id=job["lm_config"]["pad_token_id"])
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=job["vqa_new_tokens"],
            min_new_tokens=job["vqa_new_tokens"], do_sample=False, pad_token_id=job["lm_config"]["pad_token_id"],
        )
        seconds = time.perf_counter() - t0
    return {"vqa": seconds, "vqa prompt": ids.shape[1], "vqa tokens": out.shape[1] - ids.shape[1],
            "vqa ids": out[0, ids.shape[1]:].tolist()}


def job_memory(job):
    import torch

    torch.set_num_threads(job["threads"])
    base = common.rss_kib("VmRSS")
    model = load(job)
    load_peak = common.rss_kib("VmHWM")
    with torch.inference_mode():
        model(input_ids=torch.arange(16)[None] % job["text_vocab"])
    return {
        "baseline_kib": base,
        "load_peak_kib": load_peak,
        "use_peak_kib": common.rss_kib("VmHWM"),
        "use_rss_kib": common.rss_kib("VmRSS"),
    }


def job_link_real8b(job):
    os.makedirs(job["hf_dir"], exist_ok=True)
    if any(k != v for k, v in job["mapping"].items()):
        raise ValueError("real8b links the original shards: the transformers keys must equal the original ones")
    hf_config("lm", job["config"]).save_pretrained(job["hf_dir"])
    for name in os.listdir(job["orig_dir"]):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            dst = os.path.join(job["hf_dir"], name)
            if os.path.lexists(dst):
                os.remove(dst)
            os.symlink(os.path.abspath(os.path.join(job["orig_dir"], name)), dst)
    return {"linked": True}


def job_real8b(job):
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    base = common.rss_kib("VmRSS")
    t0 = time.perf_counter()
    model = model_class("lm").from_pretrained(job["hf_dir"], dtype=torch.bfloat16)
    model.eval()
    res = {"load": time.perf_counter() - t0, "baseline_kib": base, "load_peak_kib": common.rss_kib("VmHWM")}
    res["step_bytes"] = sum(p.numel() * p.element_size() for name, p in model.state_dict().items()
                            if "embed_tokens" not in name)
    pad = job["lm_config"]["pad_token_id"]
    ids = torch.tensor([common.vqa_prompt(job)])
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :32], max_new_tokens=2, do_sample=False, pad_token_id=pad)
        t0 = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                       pad_token_id=pad)
        res["prefill"], res["prefill tokens"] = time.perf_counter() - t0, ids.shape[1]
        rng = np.random.default_rng(3)
        for batch in job["decode_batches"]:
            prompt = torch.from_numpy(rng.integers(0, job["text_vocab"], (batch, job["decode_prompt_len"])))

            def gen(n):
                return model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=pad)

            gen(2)
            timing = common.decode_timing(gen, job, batch)
            timing[f"ids b{batch}"] = timing[f"ids b{batch}"][:, prompt.shape[1]:].flatten().tolist()
            res.update(timing)
    res["peak_kib"] = common.rss_kib("VmHWM")
    return res


def job_train(job):
    """One optimizer step of a plain training loop: forward with labels (transformers' causal-LM loss), backward,
    torch.optim.AdamW as the Trainer builds it (hyper-parameters of the original's t2i_sft.sh, no decay on the
    RMSNorm weights), gradients freed after the step (zero_grad's default); gradient checkpointing per decoder
    layer with job["recompute"]; the model's attention_dropout set to job["attention_dropout"]."""
    import torch

    torch.set_num_threads(job["threads"])
    base = common.rss_kib("VmRSS")
    model = load(job, attention_dropout=job["attention_dropout"])
    model.train()
    if job["recompute"]:
        model.gradient_checkpointing_enable()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-5, betas=(0.9, 0.95), eps=1e-6)
    ids = torch.from_numpy(common.train_batch(job))

    def forward():
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    def update(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    res = common.train_timing(forward, update, job)
    res["baseline_kib"] = base
    return res


def run_job(job):
    import torch
    import transformers

    result = {
        "hf_keys": job_hf_keys,
        "convert": job_convert,
        "vq": job_vq,
        "lm": job_lm,
        "t2i": job_t2i,
        "vqa": job_vqa,
        "memory": job_memory,
        "train": job_train,
        "link_real8b": job_link_real8b,
        "real8b": job_real8b,
    }[job["job"]](job)
    result["_versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    return result


if __name__ == "__main__":
    common.main_worker(run_job)
