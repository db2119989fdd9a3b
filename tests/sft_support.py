"""Shared setup of the SFT tests: the reference run's inputs rebuilt from the fixtures (public/sft/README.md).

* prepared data: one npz per sample of ``sft/data.json`` with the codes of ``sft/features.npz`` (the codes the
  original ``prepare_data.py`` wrote), so these tests do not depend on our prepare_data.py;
* the model folder of the reference run: ``llm/`` with the config's ``attention_dropout`` set as the run had it;
* the reference command line (``train_py_arguments`` of the run's log) with its ``<scratch>`` paths replaced.
"""

import json
import math
import os
import shutil

import numpy as np

from paddlemix.models.safetensors_io import SafetensorsFile


def write_prepared(sft_dir, out_dir):
    """OUT/feature/<name>.npz and OUT/list/train.json for the reference samples; returns the list path."""
    with open(os.path.join(sft_dir, "data.json"), encoding="utf-8") as f:
        items = json.load(f)
    feats = np.load(os.path.join(sft_dir, "features.npz"))
    os.makedirs(os.path.join(out_dir, "feature"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "list"), exist_ok=True)
    for it in items:
        np.savez(os.path.join(out_dir, "feature", it["name"] + ".npz"), name=np.str_(it["name"]),
                 texts=np.str_(it["text"]), images=feats["codes_" + it["name"]])
    path = os.path.join(out_dir, "list", "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"prefix": os.path.join(out_dir, "feature"), "path_list": [it["name"] + ".npz" for it in items]}, f)
    return path


def write_model(fixtures_dir, out_dir, attention_dropout):
    """A copy of llm/ with attention_dropout set (the reference runs changed it the same way)."""
    shutil.copytree(os.path.join(fixtures_dir, "llm"), out_dir)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["attention_dropout"] = attention_dropout
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return out_dir


def load_log(sft_dir, accumulation=False):
    with open(os.path.join(sft_dir, "train_log_accum.json" if accumulation else "train_log.json"), encoding="utf-8") as f:
        return json.load(f)


def write_sample_order(log, path):
    """The run's sample order, one list per epoch (the reference runs take one optimizer step per epoch)."""
    per_epoch = {}
    for step in log["steps"]:
        per_epoch.setdefault(math.ceil(step["epoch"] - 1e-9) - 1, []).extend(sum(step["microbatch_sample_order"], []))
    with open(path, "w", encoding="utf-8") as f:
        json.dump([per_epoch[e] for e in sorted(per_epoch)], f)
    return path


def reference_argv(log, model_dir, list_path, output_dir, tokenizer_dir, sample_order_path, overrides=()):
    """The reference run's train.py arguments with our paths, plus --tokenizer_path and --sample_order.
    overrides: (flag, value) pairs replacing or adding flags."""
    args = list(log["train_py_arguments"])
    paths = {"--model_name_or_path": model_dir, "--data_path": list_path, "--output_dir": output_dir}
    for i in range(0, len(args) - 1):
        if args[i] in paths:
            args[i + 1] = paths[args[i]]
    extra = [("--tokenizer_path", tokenizer_dir), ("--sample_order", sample_order_path)] + list(overrides)
    for flag, value in extra:
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def read_weights(path):
    with SafetensorsFile(path) as st:
        return {k: np.array(st.get(k)) for k in st.keys()}
