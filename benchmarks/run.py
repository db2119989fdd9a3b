"""Benchmarks of this package against the PyTorch reference (transformers' Emu3 port), side by side.

    python benchmarks/run.py --suite all            # full run; needs the reference venv (setup_reference.sh)
    python benchmarks/run.py --suite all --smoke    # tiny configs, our side only, under a minute (CI)
    python benchmarks/run.py --suite vq --threads 2
    python benchmarks/run.py --suite real8b          # Emu3-8B's exact shape, bf16 / int8 vs the reference (17 GB)
    python benchmarks/run.py --suite real8b --smoke --layers 2   # the same code on a small shape (seconds)

Every case runs in a fresh subprocess per side, with the same thread count (OMP/MKL env, paddle's and torch's
set_num_threads) and the same random weights: written once by our ``save_pretrained`` in the original key layout
(benchmarks/.work/weights), and handed to the reference through the transformers <-> original key mapping our
models document (``_map_checkpoint_key``). The table (case, ours, reference, gain, target) is printed and, for full
runs, appended to benchmarks/RESULTS.md as a dated section with the exact command. No timing is asserted.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work")
REF_PYTHON = os.path.join(HERE, ".ref_venv", "bin", "python")
SUITES = ("vq", "lm", "t2i", "vqa", "memory", "floor", "parallel", "serve", "train")
# suites not in "all": they need their own large checkpoint
EXTRA_SUITES = ("real8b",)
REAL8B_VARIANTS = ("bfloat16", "weight_only_int8")


def lm_config(vocab_size, codebook_size, hidden, layers, heads, kv_heads, intermediate, max_pos):
    """An Emu3 LM config (original field names) whose last `codebook_size` ids are visual tokens, preceded by the
    special tokens, preceded by ordinary text ids."""
    eoi = vocab_size - codebook_size - 1
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "pad_token_id": eoi - 7,
        "eol_token_id": eoi - 6,
        "eof_token_id": eoi - 5,
        "bos_token_id": eoi - 4,
        "eos_token_id": eoi - 3,
        "img_token_id": eoi - 2,
        "boi_token_id": eoi - 1,
        "eoi_token_id": eoi,
    }


def serve_lm_config(codebook_size, **dims):
    """An LM config whose special ids follow the byte-level tokenizer serve_bench.py writes (256 ranks, then the
    special tokens, then the visual tokens), so the server can tokenize prompts and decode images."""
    config = lm_config(256 + 211 + codebook_size, codebook_size, **dims)
    config.update(pad_token_id=256, eol_token_id=459, eof_token_id=460, bos_token_id=462, eos_token_id=463,
                  img_token_id=464, boi_token_id=465, eoi_token_id=466)
    return config


def vq_config(codebook_size, ch, ch_mult, num_res_blocks, attn_resolutions):
    return {
        "codebook_size": codebook_size,
        "embed_dim": 4,
        "z_channels": 4,
        "double_z": False,
        "in_channels": 3,
        "out_channels": 3,
        "temporal_downsample_factor": 4,
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": attn_resolutions,
        "dropout": 0.0,
    }


FULL = {
    "vq": vq_config(32768, 64, [1, 2, 2, 4], 2, [3]),
    "lm": lm_config(40000, 32768, 512, 8, 8, 2, 1376, 4096),
    "memory_lm": lm_config(40000, 32768, 2048, 8, 16, 4, 5632, 4096),
    # Emu3-8B's exact shape (Emu3-Gen / Emu3-Chat config.json)
    "real8b": lm_config(184622, 32768, 4096, 32, 32, 8, 14336, 9216),
    "serve_lm": serve_lm_config(32768, hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1376, max_pos=4096),
    "params": {
        "vq_sizes": [256, 512], "vq_warm_sizes": [256], "repeats": 3, "vq_repeats": 1,
        "prefill_len": 1024, "decode_prompt_len": 128, "decode_steps": 64, "decode_batches": [1, 2],
        "t2i_grid": [32, 32], "t2i_prompt_len": 20, "top_k": 2048, "guidance_scale": 3.0,
        "vqa_grid": [32, 32], "vqa_question_len": 4, "vqa_new_tokens": 64,
        "floor_bytes": 512 * 1024**2,
        "real8b_grid": [32, 32], "real8b_question_len": 4, "real8b_prompt_len": 32, "real8b_steps": 16,
        "real8b_repeats": 2,
        "serve_requests": 32, "serve_grid": [16, 16],
        "train_batch": 4, "train_len": 1024, "train_steps": 3,
    },
}
SMOKE = {
    "vq": vq_config(512, 32, [1, 2], 1, [1]),
    "lm": lm_config(1000, 512, 64, 2, 4, 2, 160, 512),
    "memory_lm": lm_config(1000, 512, 256, 2, 4, 2, 512, 512),
    "real8b": lm_config(5000, 1024, 256, 2, 8, 2, 704, 2048),
    "serve_lm": serve_lm_config(512, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=160, max_pos=512),
    "params": {
        "vq_sizes": [32], "vq_warm_sizes": [32], "repeats": 2, "vq_repeats": 2,
        "prefill_len": 64, "decode_prompt_len": 8, "decode_steps": 8, "decode_batches": [1, 2],
        "t2i_grid": [4, 4], "t2i_prompt_len": 6, "top_k": 64, "guidance_scale": 3.0,
        "vqa_grid": [4, 4], "vqa_question_len": 4, "vqa_new_tokens": 8,
        "floor_bytes": 64 * 1024**2,
        "real8b_grid": [8, 8], "real8b_question_len": 4, "real8b_prompt_len": 8, "real8b_steps": 4,
        "real8b_repeats": 1,
        "serve_requests": 4, "serve_grid": [4, 4],
        "train_batch": 2, "train_len": 32, "train_steps": 2,
    },
}

# (row label, target text, check(ours, ref) -> bool) for the rows the issue sets targets on
TARGETS = {
    "VQ encode+decode": ("gain >= 3x", lambda gain, ours: gain >= 3.0),
    "t2i greedy tokens/s": ("gain >= 3x", lambda gain, ours: gain >= 3.0),
    "t2i top-k tokens/s": ("gain >= 3x", lambda gain, ours: gain >= 3.0),
    "decode step b1 / floor": ("ours <= 1.3", lambda gain, ours: ours <= 1.3),
    "peak RSS loading / ckpt": ("ours <= 1.2", lambda gain, ours: ours <= 1.2),
    "VQA": ("gain >= 1.2x", lambda gain, ours: gain >= 1.2),
    "8B bf16 peak RSS loading / ckpt": ("ours <= 1.1", lambda gain, ours: ours <= 1.1),
    "8B bf16 decode step b1 / floor": ("ours <= 1.3", lambda gain, ours: ours <= 1.3),
    "8B weight_only_int8 decode step b1 / floor": ("ours <= 1.5", lambda gain, ours: ours <= 1.5),
    "8B bf16 decode step b1 (ms)": ("gain >= 2x", lambda gain, ours: gain >= 2.0),
    "8B bf16 VQA prefill": ("gain >= 1x", lambda gain, ours: gain >= 1.0),
    "serve images/s": ("gain >= 2x", lambda gain, ours: gain >= 2.0),
    "train tokens/s": ("gain >= 1x", lambda gain, ours: gain >= 1.0),
    "train peak RSS": ("gain >= 1x (no more memory)", lambda gain, ours: gain >= 1.0),
    "recompute: activation memory cut": ("ours >= 2x", lambda gain, ours: ours >= 2.0),
}


class Runner:
    def __init__(self, args, configs):
        self.args = args
        self.configs = configs
        self.params = configs["params"]
        self.reference = args.reference
        self.rows = []
        self.versions = {}
        self.failed = []
        self.cache = {}
        self.lm_done = None
        self.checks = []
        os.makedirs(os.path.join(WORK, "logs"), exist_ok=True)

    # ------------------------------------------------------------------ subprocesses
    def call(self, side, job, nproc=1):
        """Run one job in a fresh worker process of `side` ("ours" or "ref"); its JSON result, or None on error.
        nproc > 1: ``nproc`` processes under ``paddle.distributed.launch`` (rank 0 writes the result); a job may set
        its own "threads" (per process)."""
        python = sys.executable if side == "ours" else REF_PYTHON
        script = os.path.join(HERE, "ours_worker.py" if side == "ours" else "ref_worker.py")
        job = dict({"threads": self.args.threads}, **job)
        tag = f"{side}-{job['job']}{job.get('tag_suffix', '')}-{job.get('name', '')}".rstrip("-")
        job_path = os.path.join(WORK, "logs", f"{tag}.job.json")
        out_path = os.path.join(WORK, "logs", f"{tag}.result.json")
        log_path = os.path.join(WORK, "logs", f"{tag}.log")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f, indent=1)
        if os.path.exists(out_path):
            os.remove(out_path)
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(job["threads"])
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if side == "ours":
            env.update(self.args.ours_env)
        t0 = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                launcher = [] if nproc == 1 else ["-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                                                  "--log_dir", os.path.join(WORK, "logs", f"{tag}-ranks")]
                proc = subprocess.run([python, *launcher, script, job_path, out_path], stdout=log,
                                      stderr=subprocess.STDOUT, env=env, timeout=self.args.job_timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"timeout after {self.args.job_timeout} s"
        took = time.perf_counter() - t0
        if code != 0 or not os.path.exists(out_path):
            with open(log_path, "r", encoding="utf-8", errors="replace") as f:
                tail = f.read()[-2000:]
            print(f"[{tag}] FAILED (exit {code}, {took:.0f} s); log {log_path}:\n{tail}", flush=True)
            self.failed.append(tag)
            return None
        print(f"[{tag}] done in {took:.1f} s", flush=True)
        with open(out_path, "r", encoding="utf-8") as f:
            result = json.load(f)
        self.versions.update(result.pop("_versions", {}))
        return result

    # ------------------------------------------------------------------ weights
    def weights(self, model, name, ours_only=False):
        """Original-layout weights for configs[name] (made once, cached by config hash) and, with the reference
        (unless ours_only), the transformers-layout folder derived from them. Returns (orig_dir, hf_dir or None)."""
        if name in self.cache:
            return self.cache[name]
        config = self.configs[name]
        digest = hashlib.sha1(json.dumps([model, config, 0], sort_keys=True).encode()).hexdigest()[:10]
        base = os.path.join(WORK, "weights", f"{name}-{digest}")
        orig_dir, hf_dir = os.path.join(base, "orig"), os.path.join(base, "hf")
        done = os.path.join(orig_dir, ".complete")
        if not os.path.exists(done):
            if self.call("ours", {"job": "make_weights", "name": name, "model": model, "config": config,
                                  "orig_dir": orig_dir, "seed": 0}) is None:
                self.cache[name] = (None, None)
                return self.cache[name]
            open(done, "w").close()
        if not self.reference or ours_only:
            self.cache[name] = (orig_dir, None)
            return self.cache[name]
        hf_done = os.path.join(hf_dir, ".complete")
        if not os.path.exists(hf_done):
            keys = self.call("ref", {"job": "hf_keys", "name": name, "model": model, "config": config})
            mapped = keys and self.call("ours", {"job": "map_keys", "name": name, "model": model,
                                                  "hf_keys": sorted(keys["keys"])})
            converted = mapped and self.convert(model, name, config, keys["keys"], mapped["mapping"], orig_dir, hf_dir)
            if not converted:
                self.cache[name] = (orig_dir, None)
                return self.cache[name]
            open(hf_done, "w").close()
        self.cache[name] = (orig_dir, hf_dir)
        return self.cache[name]

    def convert(self, model, name, config, hf_shapes, mapping, orig_dir, hf_dir):
        unmapped = sorted(set(hf_shapes) - set(mapping))
        if unmapped:
            print(f"[{name}] our key mapping does not cover transformers keys {unmapped[:10]}", flush=True)
            self.failed.append(f"map-{name}")
            return None
        return self.call("ref", {"job": "convert", "name": name, "model": model, "config": config,
                                 "mapping": mapping, "hf_shapes": hf_shapes, "orig_dir": orig_dir, "hf_dir": hf_dir})

    def both(self, job, model, name):
        """Run a case job on both sides: (ours result or None, reference result or None)."""
        orig_dir, hf_dir = self.weights(model, name)
        if orig_dir is None:
            return None, None
        job = dict(job, name=name, model=model, config=self.configs[name], orig_dir=orig_dir, hf_dir=hf_dir)
        job.update(self.lm_ids(name) if model == "lm" else {})
        ours = self.call("ours", job)
        ref = self.call("ref", job) if self.reference and hf_dir else None
        return ours, ref

    def lm_ids(self, name):
        c = self.configs[name]
        codebook = c["vocab_size"] - c["eoi_token_id"] - 1
        return {"lm_config": c, "first_visual_id": c["eoi_token_id"] + 1, "codebook_size": codebook,
                "text_vocab": c["pad_token_id"]}

    # ------------------------------------------------------------------ table
    def add(self, label, ours, ref, unit, higher_better=False, fmt="{:.3f}", compare=True):
        """One table row; compare=False: no gain column (two measurements of the machine, not of the two sides)."""
        gain = None
        if compare and ours is not None and ref is not None and ours > 0 and ref > 0:
            gain = ours / ref if higher_better else ref / ours
        self.rows.append((label, ours, ref, unit, gain, fmt))

    def parity(self, label, ours, ref, key):
        """Same weights, same input: how many of the tokens/codes both sides produce are identical."""
        if ours is None or ref is None or key not in ours or key not in ref:
            return
        a, b = ours[key], ref[key]
        same = sum(x == y for x, y in zip(a, b))
        self.checks.append(f"{label}: {same}/{max(len(a), len(b))} identical")

    def get(self, result, key, scale=1.0):
        return None if result is None or key not in result else result[key] * scale

    # ------------------------------------------------------------------ suites
    def suite_vq(self):
        p = self.params
        ours, ref = self.both({"job": "vq", "sizes": p["vq_sizes"], "warm_sizes": p["vq_warm_sizes"],
                               "repeats": p["vq_repeats"]}, "vq", "vq")
        for size in p["vq_sizes"]:
            for what in ("encode", "decode"):
                self.add(f"VQ {what} {size}x{size}", self.get(ours, f"{what} {size}"), self.get(ref, f"{what} {size}"), "s")
            both = [None if r is None else r[f"encode {size}"] + r[f"decode {size}"] for r in (ours, ref)]
            self.add(f"VQ encode+decode {size}x{size}", both[0], both[1], "s")
            self.parity(f"VQ codes {size}x{size}", ours, ref, f"codes {size}")

    def lm_results(self, batches, prefill=True):
        """The LM job's (ours, ref) results, run once per invocation (the floor suite reuses the lm suite's)."""
        p = self.params
        if self.lm_done is None or not set(batches) <= set(self.lm_done[0]):
            job = {"job": "lm", "prefill_len": p["prefill_len"] if prefill else 0, "repeats": p["repeats"],
                   "decode_prompt_len": p["decode_prompt_len"], "decode_steps": p["decode_steps"],
                   "decode_batches": batches, "floor_bytes": p["floor_bytes"]}
            self.lm_done = (batches,) + self.both(job, "lm", "lm")
        return self.lm_done[1:]

    def suite_lm(self):
        p = self.params
        ours, ref = self.lm_results(p["decode_batches"])
        self.add(f"LM prefill {p['prefill_len']} tokens", self.get(ours, "prefill"), self.get(ref, "prefill"), "s")
        for b in p["decode_batches"]:
            self.add(f"LM decode step b{b}", self.get(ours, f"decode step b{b}", 1e3),
                     self.get(ref, f"decode step b{b}", 1e3), "ms", fmt="{:.2f}")
            tps = [None if r is None else b / r[f"decode step b{b}"] for r in (ours, ref)]
            self.add(f"LM decode tokens/s b{b}", tps[0], tps[1], "tok/s", higher_better=True, fmt="{:.1f}")
            self.parity(f"LM greedy ids b{b}", ours, ref, f"ids b{b}")

    def suite_t2i(self):
        p = self.params
        modes = ["greedy", "top-k"]
        ours, ref = self.both({"job": "t2i", "t2i_grid": p["t2i_grid"], "t2i_prompt_len": p["t2i_prompt_len"],
                               "guidance_scale": p["guidance_scale"], "top_k": p["top_k"], "t2i_modes": modes},
                              "lm", "lm")
        h, w = p["t2i_grid"]
        for mode in modes:
            label = f"t2i {mode}"
            self.add(f"{label} {h}x{w} s/image", self.get(ours, label), self.get(ref, label), "s", fmt="{:.2f}")
            tps = [None if r is None else r[f"{label} tokens"] / r[label] for r in (ours, ref)]
            self.add(f"{label} tokens/s", tps[0], tps[1], "tok/s", higher_better=True, fmt="{:.1f}")
        self.parity("t2i greedy ids", ours, ref, "t2i greedy ids")

    def suite_vqa(self):
        p = self.params
        ours, ref = self.both({"job": "vqa", "vqa_grid": p["vqa_grid"], "vqa_question_len": p["vqa_question_len"],
                               "vqa_new_tokens": p["vqa_new_tokens"]}, "lm", "lm")
        any_r = ours or ref
        prompt = any_r["vqa prompt"] if any_r else "?"
        self.add(f"VQA {prompt}-token prompt + {p['vqa_new_tokens']} new", self.get(ours, "vqa"), self.get(ref, "vqa"),
                 "s")
        self.parity("VQA greedy ids", ours, ref, "vqa ids")

    def suite_memory(self):
        orig_dir, _ = self.weights("lm", "memory_lm")
        if orig_dir is None:
            return
        size = os.path.getsize(os.path.join(orig_dir, "model.safetensors"))
        ours, ref = self.both({"job": "memory"}, "lm", "memory_lm")
        self.add("checkpoint size", size / 1e9, size / 1e9 if ref else None, "GB")
        for key, label in (("baseline_kib", "RSS after imports"),):
            self.add(label, self.get(ours, key, 1024 / 1e9), self.get(ref, key, 1024 / 1e9), "GB")
        for key, label in (("load_peak_kib", "peak RSS loading"), ("use_peak_kib", "peak RSS after first use")):
            net = [None if r is None else (r[key] - r["baseline_kib"]) * 1024 / size for r in (ours, ref)]
            self.add(f"{label} / ckpt", net[0], net[1], "x ckpt", fmt="{:.2f}")

    def suite_real8b(self):
        """A random checkpoint of Emu3-8B's exact shape (configs["real8b"], --layers overrides the layer count),
        bf16 shards in the original layout written once tensor by tensor (benchmarks/.work, cached by config), then
        per variant (bf16, int8) a fresh process of ours and one of the reference (transformers, torch bf16, the same
        shards linked): load time and peak RSS, a VQA prefill, decode steps at batch 1 and 2 against the floor (the
        weight bytes a step reads over the copy bandwidth measured around the batch-1 timing). The fp32 row says
        what float32 weights would need."""
        p, config = self.params, dict(self.configs["real8b"])
        if self.args.layers is not None:
            config["num_hidden_layers"] = self.args.layers
        digest = hashlib.sha1(json.dumps([config, 1], sort_keys=True).encode()).hexdigest()[:10]
        base = os.path.join(WORK, "weights", f"real8b-{digest}")
        orig_dir, hf_dir = os.path.join(base, "orig"), os.path.join(base, "hf")
        if not os.path.exists(os.path.join(orig_dir, ".complete")):
            made = self.call("ours", {"job": "make_real8b", "name": "real8b", "config": config, "orig_dir": orig_dir})
            if made is None:
                return
            open(os.path.join(orig_dir, ".complete"), "w").close()
        ckpt = weight_bytes_dir(orig_dir)
        if self.reference and not os.path.exists(os.path.join(hf_dir, ".complete")):
            keys = self.call("ref", {"job": "hf_keys", "name": "real8b", "model": "lm", "config": config})
            mapped = keys and self.call("ours", {"job": "map_keys", "name": "real8b", "model": "lm",
                                                  "hf_keys": sorted(keys["keys"])})
            if mapped and self.call("ref", {"job": "link_real8b", "name": "real8b", "config": config,
                                            "mapping": mapped["mapping"], "orig_dir": orig_dir, "hf_dir": hf_dir}):
                open(os.path.join(hf_dir, ".complete"), "w").close()
        self.cache["real8b"] = (orig_dir, hf_dir)
        names = dict(self.lm_ids("real8b"), lm_config=config)
        job = dict(names, job="real8b", config=config, orig_dir=orig_dir, hf_dir=hf_dir, vqa_grid=p["real8b_grid"],
                   vqa_question_len=p["real8b_question_len"], decode_prompt_len=p["real8b_prompt_len"],
                   decode_steps=p["real8b_steps"], repeats=p["real8b_repeats"], decode_batches=[1, 2],
                   floor_bytes=p["floor_bytes"])
        ref = None
        if self.reference and os.path.exists(os.path.join(hf_dir, ".complete")):
            ref = self.call("ref", dict(job, name="real8b-ref"))  # bf16: the reference column of every variant
        params = sum(int(v) for v in weight_shapes_numel(orig_dir))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.add(f"8B checkpoint ({config['num_hidden_layers']} layers, bf16 shards)", ckpt / 1e9, None, "GB",
                 compare=False)
        self.add(f"8B fp32: cannot run here ({4 * params / 1e9:.1f} GB of float32 weights against "
                 f"{ram / 1e9:.1f} GB of RAM)" if 4 * params > ram else
                 f"8B fp32 weights ({4 * params / 1e9:.1f} GB, {ram / 1e9:.1f} GB of RAM; not run)",
                 None, None, "", compare=False)
        for variant in REAL8B_VARIANTS:
            ours = self.call("ours", dict(job, name=f"real8b-{variant}", variant=variant))
            tag = "bf16" if variant == "bfloat16" else variant
            self.add(f"8B {tag} load", self.get(ours, "load"), self.get(ref, "load"), "s", fmt="{:.1f}")
            peaks = [None if r is None else (r["load_peak_kib"] - r["baseline_kib"]) * 1024 for r in (ours, ref)]
            self.add(f"8B {tag} peak RSS loading / ckpt", *[None if v is None else v / ckpt for v in peaks],
                     "x ckpt", fmt="{:.2f}")
            self.add(f"8B {tag} VQA prefill {int(self.get(ours or ref, 'prefill tokens') or 0)} tokens",
                     self.get(ours, "prefill"), self.get(ref, "prefill"), "s", fmt="{:.1f}")
            for b in (1, 2):
                self.add(f"8B {tag} decode step b{b} (ms)", self.get(ours, f"decode step b{b}", 1e3),
                         self.get(ref, f"decode step b{b}", 1e3), "ms", fmt="{:.1f}")
            floor = [None if r is None else r["step_bytes"] / r["bandwidth b1"] for r in (ours, ref)]
            self.add(f"8B {tag} floor ({self.get(ours, 'step_bytes', 1e-9) or 0:.2f} GB per step / copy bandwidth)",
                     *[None if f is None else f * 1e3 for f in floor], "ms", fmt="{:.1f}", compare=False)
            ratio = [None if r is None or f is None else r["decode step b1"] / f for r, f in zip((ours, ref), floor)]
            self.add(f"8B {tag} decode step b1 / floor", ratio[0], ratio[1], "x floor", fmt="{:.2f}", compare=False)
            self.parity(f"8B {tag} greedy ids b1 (random weights)", ours, ref, "ids b1")

    def suite_floor(self):
        """Each side's batch-1 decode step against the floor at the copy bandwidth its own worker measured right
        before and after that step timing (common.decode_timing)."""
        orig_dir, _ = self.weights("lm", "lm")
        if orig_dir is None:
            return
        ours, ref = self.lm_results([1], prefill=False)
        step_bytes = weight_bytes(os.path.join(orig_dir, "model.safetensors"), exclude=("model.embed_tokens.weight",))
        bw = [self.get(r, "bandwidth b1") for r in (ours, ref)]
        floor = [None if b is None else step_bytes / b for b in bw]
        self.add("memory bandwidth around the b1 decode timing (numpy copy, read+write)",
                 None if bw[0] is None else bw[0] / 1e9, None if bw[1] is None else bw[1] / 1e9, "GB/s",
                 fmt="{:.1f}", compare=False)
        self.add(f"decode-step floor ({step_bytes / 1e6:.0f} MB of weights / that bandwidth)",
                 None if floor[0] is None else floor[0] * 1e3, None if floor[1] is None else floor[1] * 1e3, "ms",
                 fmt="{:.2f}", compare=False)
        ratio = [None if r is None or f is None else r["decode step b1"] / f for r, f in zip((ours, ref), floor)]
        self.add("decode step b1 / floor", ratio[0], ratio[1], "x floor", fmt="{:.2f}")

    def suite_serve(self):
        """The server under load, ours only (the reference has no server): the same t2i requests (the script's
        defaults, one seed each) all at once, batched by the scheduler, against one at a time; client-side
        throughput and latency, and whether batching left every image unchanged."""
        p = self.params
        lm_dir, _ = self.weights("lm", "serve_lm", ours_only=True)
        vq_dir, _ = self.weights("vq", "vq", ours_only=True)
        if lm_dir is None or vq_dir is None:
            return
        config = self.configs["serve_lm"]
        job = {"job": "serve", "name": "serve", "orig_dir": lm_dir, "vq_dir": vq_dir,
               "tokenizer_dir": os.path.join(WORK, "serve_tokenizer"),
               "codebook_size": config["vocab_size"] - config["eoi_token_id"] - 1, "top_k": p["top_k"],
               "serve_requests": p["serve_requests"], "serve_grid": p["serve_grid"]}
        batched, alone = (self.call("ours", dict(job, mode=mode, name=f"serve-{mode}",
                                                 images_path=os.path.join(WORK, "logs", f"serve-{mode}.npz")))
                          for mode in ("concurrent", "sequential"))
        n, (h, w) = p["serve_requests"], p["serve_grid"]
        what = f"{n} t2i requests {h}x{w} (ours: concurrent, batched; reference column: one at a time)"
        self.add(f"serve images/s, {what}", self.get(batched, "images/s"), self.get(alone, "images/s"), "img/s",
                 higher_better=True, fmt="{:.3f}")
        for q in ("p50", "p95"):
            self.add(f"serve {q} latency, {what}", self.get(batched, q), self.get(alone, q), "s", fmt="{:.2f}",
                     compare=False)
        if batched and alone:
            import numpy as np

            a, b = np.load(batched["images_path"]), np.load(alone["images_path"])
            # the same tokens give pixels equal up to 1 (the VQ decode of a batch rounds differently)
            same = sum(np.abs(a[k].astype(np.int64) - b[k]).max() <= 1 for k in a.files)
            self.checks.append(f"serve: {same}/{n} images the same batched and alone (pixels within 1), "
                               f"{batched['batches']} batches for {n} concurrent requests")
    def suite_parallel(self):
        """The batch-1 decode step of the lm config at tensor parallel 1 (one process, 2 threads) and 2 (two
        launched processes over gloo, 1 thread each), and the weight bytes each rank reads per step (its
        parameters but the embedding table, of which a step reads one row per token). Our side only."""
        orig_dir, _ = self.weights("lm", "lm")
        if orig_dir is None:
            return
        p = self.params
        job = {"job": "parallel", "name": "lm", "model": "lm", "orig_dir": orig_dir, "config": self.configs["lm"],
               "decode_steps": p["decode_steps"], "decode_prompt_len": p["decode_prompt_len"],
               "decode_batches": [1], "prefill_len": 0, "repeats": p["repeats"], **self.lm_ids("lm")}
        tp1 = self.call("ours", dict(job, name="tp1", threads=2))
        tp2 = self.call("ours", dict(job, name="tp2", threads=1), nproc=2)
        for label, r in (("TP 1: 1 process x 2 threads", tp1), ("TP 2: 2 processes x 1 thread (gloo)", tp2)):
            self.add(f"parallel decode step b1, {label}", self.get(r, "decode step b1", 1e3), None, "ms",
                     fmt="{:.2f}", compare=False)
            self.add(f"parallel weight bytes read per step per rank, {label}", self.get(r, "step_bytes", 1e-6), None,
                     "MB", fmt="{:.1f}", compare=False)
        if tp1 and tp2:
            self.add("parallel TP 2 speedup (TP 1 step / TP 2 step)", tp1["decode step b1"] / tp2["decode step b1"],
                     None, "x", fmt="{:.2f}", compare=False)
            same = tp1["ids b1"] == tp2["ids b1"]
            self.checks.append(f"parallel greedy ids TP 1 vs TP 2: {'same' if same else 'DIFFERENT'}")

    def suite_train(self):
        """One optimizer step (forward with labels, backward, AdamW) of the lm config, without and with recompute:
        tokens/s, peak RSS above the RSS after imports, and the activation memory (the RSS growth over the first
        forward, common.train_timing), whose ratio without/with recompute is the recompute cut. Then the same step
        with the shipped Emu3 configs' attention_dropout 0.1 (dropout on the embeddings, both residual branches and
        the attention probabilities, active in training; the fixtures' reference runs set it to 0)."""
        p = self.params
        shape = f"{p['train_batch']}x{p['train_len']}"
        tokens = p["train_batch"] * p["train_len"]
        activations, losses = {}, {}
        for recompute, dropout in ((False, 0.0), (True, 0.0), (False, 0.1)):
            tag = ("-recompute" if recompute else "") + ("-dropout" if dropout else "")
            job = {"job": "train", "tag_suffix": tag, "recompute": recompute, "attention_dropout": dropout,
                   "train_batch": p["train_batch"], "train_len": p["train_len"], "train_steps": p["train_steps"]}
            ours, ref = self.both(job, "lm", "lm")
            suffix = (", recompute" if recompute else "") + (f", attention_dropout {dropout}" if dropout else "")
            self.add(f"train step {shape} tokens{suffix}", self.get(ours, "train step"), self.get(ref, "train step"),
                     "s", fmt="{:.2f}")
            tps = [None if r is None else tokens / r["train step"] for r in (ours, ref)]
            self.add(f"train tokens/s{suffix}", tps[0], tps[1], "tok/s", higher_better=True, fmt="{:.0f}")
            peak = [None if r is None else (r["peak_kib"] - r["baseline_kib"]) * 1024 for r in (ours, ref)]
            self.add(f"train peak RSS{suffix}", *[None if v is None else v / 1e9 for v in peak], "GB")
            act = [None if r is None else r["activation_kib"] * 1024 for r in (ours, ref)]
            self.add(f"train activation memory (first forward){suffix}", *[None if v is None else v / 1e9 for v in act],
                     "GB")
            if not dropout:
                activations[recompute] = act
                losses[recompute] = [None if r is None else r["train losses"] for r in (ours, ref)]
        cut = [None if a is None or b is None or b <= 0 else a / b for a, b in zip(activations[False], activations[True])]
        self.add("recompute: activation memory cut (without / with)", cut[0], cut[1], "x", fmt="{:.2f}", compare=False)
        (ours_plain, ref_plain), (ours_rc, _) = losses[False], losses[True]
        if ours_plain and ref_plain:
            self.checks.append(f"train loss of the first step: ours {ours_plain[0]:.6f}, reference {ref_plain[0]:.6f}")
        if ours_plain and ours_rc:
            diff = max(abs(a - b) for a, b in zip(ours_plain, ours_rc))
            self.checks.append(f"our train losses with and without recompute: max difference {diff:.2e}")


def weight_bytes(path, exclude=()):
    """Bytes of the tensors of a safetensors file, from its header, leaving out the named keys."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items()
               if k != "__metadata__" and k not in exclude)


def weight_bytes_dir(folder):
    """Bytes of the tensors of every safetensors shard of a folder."""
    return sum(weight_bytes(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def weight_shapes_numel(folder):
    """Element counts of the tensors of every safetensors shard of a folder, from the headers."""
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with open(os.path.join(folder, name), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                count = 1
                for d in v["shape"]:
                    count *= d
                yield count


def fmt_value(v, fmt):
    return "n/a" if v is None else fmt.format(v)


def table(runner, judge):
    lines = ["| case | ours | reference | unit | gain (>1: ours better) | target |",
             "|---|---:|---:|---|---:|---|"]
    for label, ours, ref, unit, gain, fmt in runner.rows:
        target = ""
        for prefix, (text, check) in TARGETS.items():
            if not judge:
                continue
            if label.startswith(prefix) and ours is not None and (gain is not None or not text.startswith("gain")):
                target = f"{text}: {'met' if check(gain or 0.0, ours) else 'NOT met'}"
        lines.append(f"| {label} | {fmt_value(ours, fmt)} | {fmt_value(ref, fmt)} | {unit} | "
                     f"{'' if gain is None else f'{gain:.2f}x'} | {target} |")
    return "\n".join(lines)


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", "r", encoding="utf-8") as f:
            mem = int(f.readline().split()[1]) / 1024**2
    except OSError:
        mem = float("nan")
    return f"{model}, {os.cpu_count()} logical CPUs, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=("all",) + SUITES + EXTRA_SUITES,
                        help="which cases to run (all: every suite but real8b)")
    parser.add_argument("--layers", type=int, help="real8b: this many decoder layers instead of the config's")
    parser.add_argument("--smoke", action="store_true", help="tiny configs (seconds); our side only by default")
    parser.add_argument("--with-reference", action="store_true", help="smoke mode: also run the reference")
    parser.add_argument("--no-reference", action="store_true", help="full mode: run our side only")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both sides")
    parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"),
                        help="markdown file the table is appended to (full runs; smoke runs only with --write)")
    parser.add_argument("--write", action="store_true", help="smoke mode: append the table to --results too")
    parser.add_argument("--job-timeout", type=float, default=1200,
                        help="seconds after which one worker process is stopped and its case reported as failed")
    parser.add_argument("--ours-env", action="append", default=[], metavar="VAR=VALUE",
                        help="an environment variable for our side only (e.g. PADDLEMIX_DISABLE_EXT_OPS=1); repeatable")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.layers is not None and args.layers < 1:
        parser.error("--layers must be at least 1")
    bad = [item for item in args.ours_env if "=" not in item or not item.split("=", 1)[0]]
    if bad:
        parser.error(f"--ours-env takes VAR=VALUE, got {bad}")
    args.ours_env = dict(item.split("=", 1) for item in args.ours_env)
    want_ref = args.with_reference if args.smoke else not args.no_reference
    if want_ref and not os.path.exists(REF_PYTHON):
        if not args.smoke:
            parser.error(f"the reference venv is missing ({REF_PYTHON}): run `bash benchmarks/setup_reference.sh` "
                         "first, or pass --no-reference")
        print(f"reference venv missing ({REF_PYTHON}): running our side only", flush=True)
        want_ref = False
    args.reference = want_ref
    runner = Runner(args, SMOKE if args.smoke else FULL)
    suites = SUITES if args.suite == "all" else (args.suite,)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    for suite in suites:
        print(f"== suite {suite}", flush=True)
        getattr(runner, f"suite_{suite}")()
    elapsed = time.perf_counter() - t0
    versions = dict(python=platform.python_version(), **runner.versions)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    header = [
        f"## {started:%Y-%m-%d %H:%M} UTC: `{command}`",
        "",
        f"- machine: {machine()}",
        f"- threads: {args.threads} on both sides; "
        + ("weights bf16 / int8 (ours compute in float32), CPU" if args.suite == "real8b" else "float32, CPU")
        + (f"; our side's extra environment: {args.ours_env}" if args.ours_env else ""),
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- configs: {'smoke (tiny)' if args.smoke else 'full'}; reference: "
        f"{'transformers Emu3 on PyTorch' if args.reference else 'not run (our side only)'}; wall time {elapsed:.0f} s; "
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"(above {args.threads:.0f}: other processes competed for the CPUs)",
    ]
    if runner.checks:
        header.append(f"- same output on both sides (greedy/argmax, float32): {'; '.join(runner.checks)}")
    if runner.failed:
        header.append(f"- FAILED jobs: {', '.join(runner.failed)} (logs in benchmarks/.work/logs)")
    if args.smoke:
        header.append("- smoke configs are tiny: the numbers only show that every case runs; targets are not judged")
    text = "\n".join(header) + "\n\n" + table(runner, judge=not args.smoke) + "\n"
    print("\n" + text)
    if not args.smoke or args.write:
        new = not os.path.exists(args.results)
        with open(args.results, "a", encoding="utf-8") as f:
            if new:
                f.write("# Benchmark results\n\nAppended by `benchmarks/run.py`; newest last.\n")
            f.write("\n" + text)
        print(f"appended to {args.results}")
    sys.exit(1 if runner.failed else 0)


if __name__ == "__main__":
    main()
