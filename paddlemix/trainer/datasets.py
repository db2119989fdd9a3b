"""Fine-tuning datasets over the prepared data of ``prepare_data.py`` (one ``.npz`` per sample plus a list file).

List file (the original's): ``{"prefix": "<OUT>/feature", "path_list": ["<name>.npz", ...]}``. Feature file
(``np.savez``, no pickle): ``name`` and ``texts`` (str), ``images`` (int64 ``[h, w]`` code grid), and for VQA samples
``question`` and ``answer`` (str); text-only samples hold ``name`` and ``texts`` only.

Every dataset returns, per index, ``input_ids``, ``attention_mask`` and ``labels`` (int64 numpy ``[model_max_length]``,
right-padded with the pad id, attention 0 on the padding, labels -100 where no loss is taken):

* ``Emu3FeatureDataset`` (text-to-image), the original ``emu3/train/datasets.py``:
  ``bos + text + boi + "h*w" + img + rows joined by eol + eol + eof + eoi`` (no eos). The text is dropped when
  Python's ``random.random() < null_prompt_prob`` (drawn for every item). Labels: the visual tokens only with
  ``apply_loss_on_only_vision`` (not bos, text, boi, the size digits, img, eol, eof, eoi, pads), else the input ids
  themselves, pads included (as the original).
* ``Emu3VQADataset``: the understanding prompt of ``Emu3Processor`` (bos + chat template around the image and the
  question), then the answer and eos; loss on the answer tokens and eos.
* ``Emu3TextDataset``: ``bos + text + eos``; loss on every text token and eos.

Everything is checked when the dataset is built (missing files, wrong keys, code ids outside the codebook, samples
longer than ``model_max_length``), so a bad sample is a clear error before training starts.
"""

import json
import os
import random

import numpy as np
from tqdm import tqdm

from .data_prep import read_feature
from ..models.emu3.processing_emu3 import DEFAULT_CHAT_TEMPLATE, DEFAULT_PREFIX_TEMPLATE, DEFAULT_VISUAL_TEMPLATE

IGNORE_INDEX = -100


def format_image_prompt(tokenizer, codes, visual_token_strings, prefix_template=DEFAULT_PREFIX_TEMPLATE):
    """The text of an image given as its code grid ``[h, w]``: ``boi + "{h}*{w}" + img + rows of visual tokens
    joined by eol + eol + eof + eoi``, where ``visual_token_strings[c]`` is code c's token.

    It is ``Emu3Processor``'s image prompt of mode "U" (``build_prompts``, with ``codes_to_string``) and the
    original training data's image string; written here without the processor because training loads no vision
    tokenizer (the processor needs one)."""
    h, w = np.asarray(codes).shape
    rows = tokenizer.eol_token.join("".join(visual_token_strings[c] for c in row) for row in np.asarray(codes).tolist())
    return (tokenizer.boi_token + prefix_template.format(H=h, W=w) + tokenizer.img_token + rows
            + tokenizer.eol_token + tokenizer.eof_token + tokenizer.eoi_token)
_KEYS = {"t2i": {"name", "texts", "images"}, "vqa": {"name", "texts", "images", "question", "answer"},
         "text": {"name", "texts"}}


def read_data_list(data_path):
    """The feature file paths named by a list file ``{"prefix", "path_list"}`` (FileNotFoundError / ValueError)."""
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"data list not found: {data_path}")
    try:
        with open(data_path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{data_path} is not a JSON file: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("prefix"), str) or not isinstance(d.get("path_list"), list):
        raise ValueError(f'{data_path} must hold {{"prefix": <folder>, "path_list": [<file>, ...]}} (prepare_data.py '
                         "writes it)")
    if not d["path_list"]:
        raise ValueError(f"{data_path} lists no samples")
    if not all(isinstance(p, str) for p in d["path_list"]):
        raise ValueError(f"{data_path}: path_list must hold file names (strings)")
    paths = [os.path.join(d["prefix"], p) for p in d["path_list"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{data_path} names {len(missing)} missing feature file(s): {missing[:5]}"
            + (" ..." if len(missing) > 5 else "")
        )
    return paths


class _PreparedDataset:
    """Shared part: the sample files, the tokenizer, padding to ``model_max_length``, checks at construction."""

    kind = None

    def __init__(self, data_path, tokenizer, model_max_length, codebook_size=None,
                 visual_token_pattern=DEFAULT_VISUAL_TEMPLATE[0]):
        if not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(f"model_max_length must be an integer >= 2, got {model_max_length!r}")
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.paths = read_data_list(data_path)
        if codebook_size is None:  # every visual token of the tokenizer
            prefix = visual_token_pattern.split("{")[0]
            codebook_size = sum(1 for t in tokenizer.vision_tokens if t.startswith(prefix))
        if not isinstance(codebook_size, int) or codebook_size < 1:
            raise ValueError(f"codebook_size must be a positive integer, got {codebook_size!r}")
        self.codebook_size = codebook_size
        self.visual_token_strings = [visual_token_pattern.format(token_id=i) for i in range(codebook_size)]
        for token in (self.visual_token_strings[0], self.visual_token_strings[-1]):
            if token not in tokenizer.special_tokens:
                raise ValueError(f"the tokenizer has no visual token {token!r}: codebook_size {codebook_size} is "
                                 "larger than its vision vocabulary")
        self.bov = tokenizer.encode(self.visual_token_strings[0])[0]
        self.eov = tokenizer.encode(self.visual_token_strings[-1])[0]
        checking = tqdm(self.paths, desc="checking samples", disable=len(self.paths) < 1000)
        self.lengths = [self._check(path) for path in checking]

    def __len__(self):
        return len(self.paths)

    def _check(self, path):
        data = read_feature(path)
        need = _KEYS[self.kind]
        if not need <= set(data):
            raise ValueError(f"{path}: a {self.kind} sample needs {sorted(need)}, the file has {sorted(data)}")
        if "images" in data:
            codes = data["images"]
            bad = np.unique(codes[(codes < 0) | (codes >= self.codebook_size)])
            if bad.size:
                raise ValueError(f"{path}: code ids {bad[:10].tolist()} are outside the codebook "
                                 f"(codebook_size {self.codebook_size})")
        ids, _ = self.encode(data, keep_prompt=True)
        if len(ids) > self.model_max_length:
            raise ValueError(f"{path}: the sample has {len(ids)} tokens, more than model_max_length / "
                             f"--max_position_embeddings {self.model_max_length}")
        return len(ids)

    def encode(self, data, keep_prompt=False):
        """(token ids, labels) of one sample before padding; ``keep_prompt`` never drops the text."""
        raise NotImplementedError

    def image_prompt(self, codes):
        return format_image_prompt(self.tokenizer, codes, self.visual_token_strings)

    def __getitem__(self, index):
        ids, labels = self.encode(read_feature(self.paths[index]))
        pad = self.model_max_length - len(ids)
        return {
            "input_ids": np.asarray(ids + [self.tokenizer.pad_token_id] * pad, dtype=np.int64),
            "attention_mask": np.asarray([1] * len(ids) + [0] * pad, dtype=np.int64),
            "labels": np.asarray(labels + self.pad_labels(pad), dtype=np.int64),
        }

    def pad_labels(self, pad):
        return [IGNORE_INDEX] * pad


class Emu3FeatureDataset(_PreparedDataset):
    """Text-to-image samples, as the original ``Emu3FeatureDataset``."""

    kind = "t2i"

    def __init__(self, data_path, tokenizer, model_max_length, null_prompt_prob=0.05, apply_loss_on_only_vision=True,
                 codebook_size=None, visual_token_pattern=DEFAULT_VISUAL_TEMPLATE[0]):
        if not 0.0 <= null_prompt_prob <= 1.0:
            raise ValueError(f"null_prompt_prob must be in [0, 1], got {null_prompt_prob}")
        self.null_prompt_prob = null_prompt_prob
        self.apply_loss_on_only_vision = apply_loss_on_only_vision
        super().__init__(data_path, tokenizer, model_max_length, codebook_size, visual_token_pattern)

    def input_string(self, data, keep_prompt=False):
        """The sample's text; the prompt is dropped when ``random.random() < null_prompt_prob``, drawn for every
        item as the original (never drawn with ``keep_prompt``, which the length check uses)."""
        prompt = data["texts"]
        if not keep_prompt and random.random() < self.null_prompt_prob:
            prompt = ""
        return self.tokenizer.bos_token + prompt + self.image_prompt(data["images"])

    def encode(self, data, keep_prompt=False):
        ids = self.tokenizer.encode(self.input_string(data, keep_prompt))
        if self.apply_loss_on_only_vision:
            return ids, [i if self.bov <= i <= self.eov else IGNORE_INDEX for i in ids]
        return ids, list(ids)

    def pad_labels(self, pad):
        # without apply_loss_on_only_vision the original's labels are the padded input ids: pads are targets too
        return [IGNORE_INDEX if self.apply_loss_on_only_vision else self.tokenizer.pad_token_id] * pad


class Emu3VQADataset(_PreparedDataset):
    """Question-answer samples about an image: the processor's understanding prompt, then answer + eos (the only
    tokens with a loss)."""

    kind = "vqa"

    def __init__(self, data_path, tokenizer, model_max_length, codebook_size=None,
                 visual_token_pattern=DEFAULT_VISUAL_TEMPLATE[0], chat_template=DEFAULT_CHAT_TEMPLATE):
        self.chat_template = chat_template
        super().__init__(data_path, tokenizer, model_max_length, codebook_size, visual_token_pattern)

    def encode(self, data, keep_prompt=False):
        tok = self.tokenizer
        prompt = tok.bos_token + self.chat_template.format(image_prompt=self.image_prompt(data["images"]),
                                                           text_prompt=data["question"])
        prompt_ids = tok.encode(prompt)
        answer_ids = tok.encode(data["answer"]) + [tok.eos_token_id]
        return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


class Emu3TextDataset(_PreparedDataset):
    """Text-only samples: ``bos + text + eos``, loss on the text tokens and eos."""

    kind = "text"

    def encode(self, data, keep_prompt=False):
        tok = self.tokenizer
        text_ids = tok.encode(data["texts"]) + [tok.eos_token_id]
        return [tok.bos_token_id] + text_ids, [IGNORE_INDEX] + text_ids


DATASETS = {"t2i": Emu3FeatureDataset, "vqa": Emu3VQADataset, "text": Emu3TextDataset}


def collate(samples):
    """Stack the per-sample arrays of a micro-batch into ``[B, model_max_length]`` int64 arrays."""
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
