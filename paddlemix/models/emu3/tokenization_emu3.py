"""The Emu3 text tokenizer: byte-level BPE (tiktoken) plus Emu3's special and vision tokens.

Files (as in the BAAI checkpoints): ``emu3.tiktoken`` holds one ``base64(token_bytes) rank`` per line;
``emu3_vision_tokens.txt`` holds the image/visual token surface forms, one per line. Special ids start right after
the BPE ranks (151643 for the real vocabulary): ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``,
``<|extra_0|>`` .. ``<|extra_204|>``, then the vision tokens in file order.
"""

import base64
import json
import logging
import os
import unicodedata

import numpy as np
import tiktoken

from ..configuration_utils import resolve_model_dir
from .token_ids import check_token_ids

logger = logging.getLogger(__name__)

VOCAB_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# The Qwen split regex that Emu3 uses.
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
IMSTART = "<|im_start|>"
IMEND = "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))

# role name -> default surface form
ROLE_TOKENS = {
    "bos_token": "<|extra_203|>",
    "eos_token": "<|extra_204|>",
    "pad_token": ENDOFTEXT,
    "img_token": "<|image token|>",
    "boi_token": "<|image start|>",
    "eoi_token": "<|image end|>",
    "eol_token": "<|extra_200|>",
    "eof_token": "<|extra_201|>",
}

RETURN_TENSOR_TYPES = ("pd", "np")


class BatchEncoding(dict):
    """A dict of model inputs that also allows attribute access (``inputs.input_ids``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no field {name!r}; fields: {list(self)}") from None


def to_tensor(array, return_tensors):
    """``array`` (numpy) as ``return_tensors`` asks: "pd" (paddle.Tensor), "np" (numpy) or None (nested lists)."""
    if return_tensors is None:
        return array.tolist()
    if return_tensors == "np":
        return array
    if return_tensors == "pd":
        import paddle

        return paddle.to_tensor(array)
    raise ValueError(f"return_tensors must be one of {RETURN_TENSOR_TYPES} or None, got {return_tensors!r}")


def ids_to_array(ids):
    """A 1-D int64 numpy array from an int, a list, a numpy array or a paddle.Tensor of token ids."""
    if hasattr(ids, "numpy"):
        ids = ids.numpy()
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {list(array.shape)}; use batch_decode")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def load_tiktoken_bpe(path):
    """``{token_bytes: rank}`` from a tiktoken ranks file, checking that the ranks are exactly 0..n-1."""
    ranks = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{line_no}: expected 'base64_token rank', got {line[:80]!r}")
            ranks[base64.b64decode(parts[0])] = int(parts[1])
    if not ranks:
        raise ValueError(f"{path} holds no BPE ranks")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} with no gaps or repeats")
    return ranks


def load_vision_tokens(path):
    with open(path, encoding="utf-8") as f:
        tokens = [line.strip() for line in f if line.strip()]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{path} lists a vision token twice")
    return tokens


class Emu3Tokenizer:
    """Emu3's tokenizer (tiktoken BPE with the Qwen split regex), compatible with the original ids.

    Text is NFC-normalised before encoding, and special-token surface forms inside text (``<|image start|>``,
    ``<|visual token 000042|>``, ...) encode as the special ids. No BOS is added: the processor builds prompts.

    Args:
        vocab_file: path of ``emu3.tiktoken``.
        special_tokens_file: path of ``emu3_vision_tokens.txt``.
        errors: how decoding treats broken UTF-8 (``"replace"`` gives U+FFFD).
        padding_side: ``"left"`` (what generation needs) or ``"right"``.
        bos_token .. eof_token: surface forms of the role tokens.
    """

    def __init__(
        self,
        vocab_file,
        special_tokens_file,
        errors="replace",
        padding_side="left",
        bos_token=ROLE_TOKENS["bos_token"],
        eos_token=ROLE_TOKENS["eos_token"],
        pad_token=ROLE_TOKENS["pad_token"],
        img_token=ROLE_TOKENS["img_token"],
        boi_token=ROLE_TOKENS["boi_token"],
        eoi_token=ROLE_TOKENS["eoi_token"],
        eol_token=ROLE_TOKENS["eol_token"],
        eof_token=ROLE_TOKENS["eof_token"],
    ):
        for name, path in (("vocab_file", vocab_file), ("special_tokens_file", special_tokens_file)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Emu3Tokenizer: {name} not found: {path}")
        self.vocab_file = vocab_file
        self.special_tokens_file = special_tokens_file
        self.errors = errors
        self.padding_side = padding_side
        self.mergeable_ranks = load_tiktoken_bpe(vocab_file)
        self.vision_tokens = load_vision_tokens(special_tokens_file)

        start = len(self.mergeable_ranks)
        names = (ENDOFTEXT, IMSTART, IMEND) + EXTRAS + tuple(self.vision_tokens)
        if len(set(names)) != len(names):
            raise ValueError(f"{special_tokens_file} repeats one of the built-in special tokens")
        self.special_tokens = {token: start + i for i, token in enumerate(names)}
        self.tokenizer = tiktoken.Encoding(
            "Emu3", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )
        self.eod_id = self.special_tokens[ENDOFTEXT]
        self._id_to_token = {rank: token for token, rank in self.mergeable_ranks.items()}
        self._id_to_token.update({i: token for token, i in self.special_tokens.items()})

        roles = dict(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            img_token=img_token,
            boi_token=boi_token,
            eoi_token=eoi_token,
            eol_token=eol_token,
            eof_token=eof_token,
        )
        for role, token in roles.items():
            if token not in self.special_tokens:
                raise ValueError(f"{role} {token!r} is not a special token of this vocabulary")
            setattr(self, role, token)

    @property
    def padding_side(self):
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side):
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        self._padding_side = side

    # role token ids
    bos_token_id = property(lambda self: self.special_tokens[self.bos_token])
    eos_token_id = property(lambda self: self.special_tokens[self.eos_token])
    pad_token_id = property(lambda self: self.special_tokens[self.pad_token])
    img_token_id = property(lambda self: self.special_tokens[self.img_token])
    boi_token_id = property(lambda self: self.special_tokens[self.boi_token])
    eoi_token_id = property(lambda self: self.special_tokens[self.eoi_token])
    eol_token_id = property(lambda self: self.special_tokens[self.eol_token])
    eof_token_id = property(lambda self: self.special_tokens[self.eof_token])

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, padding_side="left", **kwargs):
        """Load from a folder (or hub repo id) holding emu3.tiktoken and emu3_vision_tokens.txt.

        ``tokenizer_config.json`` and ``special_tokens_map.json`` are read when present (role tokens, ``errors``);
        keyword arguments override them.
        """
        path = resolve_model_dir(pretrained_model_name_or_path, VOCAB_FILE)
        vision_file = os.path.join(path, VISION_TOKENS_FILE)
        if not os.path.isfile(vision_file):
            raise FileNotFoundError(f"{VISION_TOKENS_FILE} not found in {path}")
        settings = {}
        for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    for key, value in json.load(f).items():
                        if key in ROLE_TOKENS:
                            # special_tokens_map may hold {"content": "<|...|>", ...} entries
                            settings[key] = value["content"] if isinstance(value, dict) else value
                        elif key == "errors":
                            settings[key] = value
        settings.update(kwargs)
        return cls(os.path.join(path, VOCAB_FILE), vision_file, padding_side=padding_side, **settings)

    def save_pretrained(self, save_directory):
        """Write emu3.tiktoken, emu3_vision_tokens.txt, tokenizer_config.json and special_tokens_map.json."""
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, VOCAB_FILE), "w", encoding="utf-8") as f:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
                f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")
        with open(os.path.join(save_directory, VISION_TOKENS_FILE), "w", encoding="utf-8") as f:
            f.writelines(token + "\n" for token in self.vision_tokens)
        roles = {role: getattr(self, role) for role in ROLE_TOKENS}
        config = {"tokenizer_class": type(self).__name__, "errors": self.errors, **roles}
        with open(os.path.join(save_directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(save_directory, SPECIAL_TOKENS_MAP_FILE), "w", encoding="utf-8") as f:
            json.dump({key: roles[key] for key in ("bos_token", "eos_token", "pad_token")}, f, indent=2)
        return save_directory

    @property
    def vocab_size(self):
        return self.tokenizer.n_vocab

    def __len__(self):
        return self.tokenizer.n_vocab

    def get_vocab(self):
        """Every token (bytes for BPE tokens, str for special tokens) with its id."""
        return {token: i for i, token in self._id_to_token.items()}

    def encode(self, text):
        """Token ids of ``text`` (NFC-normalised; special-token surface forms become special ids; no BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(unicodedata.normalize("NFC", text), allowed_special="all")

    def tokenize(self, text):
        """Tokens of ``text``: bytes for BPE tokens, str for special tokens."""
        return self.convert_ids_to_tokens(self.encode(text))

    def convert_tokens_to_ids(self, tokens):
        """Id of a token (str special token or bytes BPE token), or a list of ids for a list of tokens."""
        if isinstance(tokens, (str, bytes)):
            if tokens in self.special_tokens:
                return self.special_tokens[tokens]
            if tokens in self.mergeable_ranks:
                return self.mergeable_ranks[tokens]
            raise ValueError(f"unknown token {tokens!r}: neither a special token nor a BPE token (bytes)")
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids):
        """The token (bytes, or str for special tokens) of an id, or a list of them for a sequence of ids."""
        tokens = [self._id_to_token[i] for i in self._checked_ids(ids).tolist()]
        return tokens[0] if np.ndim(ids) == 0 else tokens

    def _checked_ids(self, ids):
        ids = ids_to_array(ids)
        check_token_ids(ids, self.vocab_size, "token_ids")
        return ids

    def decode(self, token_ids, skip_special_tokens=False, errors=None):
        """Text of ``token_ids``. ``skip_special_tokens`` drops every id >= the ``<|endoftext|>`` id (all special
        and vision tokens). Broken UTF-8 becomes U+FFFD (``errors="replace"``)."""
        ids = self._checked_ids(token_ids)
        if skip_special_tokens:
            ids = ids[ids < self.eod_id]
        return self.tokenizer.decode(ids.tolist(), errors=errors or self.errors)

    def batch_decode(self, sequences, skip_special_tokens=False, errors=None):
        """``decode`` of each row of a 2-D array/tensor or each sequence of a list."""
        if hasattr(sequences, "numpy"):
            sequences = sequences.numpy()
        return [self.decode(ids, skip_special_tokens=skip_special_tokens, errors=errors) for ids in sequences]

    def __call__(
        self,
        text,
        padding="longest",
        truncation=False,
        max_length=None,
        return_tensors=None,
        return_attention_mask=True,
        return_token_type_ids=True,
        padding_side=None,
    ):
        """Encode a string or a batch of strings.

        Args:
            text: a str or a list of str.
            padding: "longest" / True (pad to the longest row), "max_length" (pad to ``max_length``), or
                False / "do_not_pad".
            truncation: cut rows to ``max_length`` (keeping the start).
            return_tensors: "pd" (paddle.Tensor), "np" or None (lists).
            padding_side: overrides ``self.padding_side`` for this call.

        Returns:
            ``BatchEncoding`` with ``input_ids``, ``attention_mask`` (1 for real tokens) and ``token_type_ids``
            (zeros), each ``[B, L]`` (or ``[L]`` lists for a single str with ``return_tensors=None``).
        """
        single = isinstance(text, str)
        if not single and not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a str or a non-empty list of str, got {type(text).__name__}")
        texts = [text] if single else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a str or a non-empty list of str")
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if padding not in ("longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be 'longest', 'max_length', 'do_not_pad', True or False, got {padding!r}")
        if (padding == "max_length" or truncation) and max_length is None:
            raise ValueError("padding='max_length' and truncation=True need max_length")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")

        rows = self.tokenizer.encode_batch(
            [unicodedata.normalize("NFC", t) for t in texts], allowed_special="all"
        )
        if truncation:
            rows = [row[:max_length] for row in rows]
        lengths = [len(row) for row in rows]
        if padding == "do_not_pad":
            if return_tensors is not None and len(set(lengths)) > 1:
                raise ValueError(
                    f"rows have different lengths {lengths}: pass padding='longest' to return tensors"
                )
            width = max(lengths)
        else:
            width = max(lengths) if padding == "longest" else max(max_length, max(lengths))

        if return_tensors is None and padding == "do_not_pad":
            data = {"input_ids": rows, "attention_mask": [[1] * n for n in lengths]}
            data["token_type_ids"] = [[0] * n for n in lengths]
        else:
            input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
            attention_mask = np.zeros((len(rows), width), dtype=np.int64)
            for b, row in enumerate(rows):
                span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
                input_ids[b, span] = row
                attention_mask[b, span] = 1
            data = {
                "input_ids": to_tensor(input_ids, return_tensors),
                "attention_mask": to_tensor(attention_mask, return_tensors),
                "token_type_ids": to_tensor(np.zeros_like(input_ids), return_tensors),
            }
        if not return_attention_mask:
            del data["attention_mask"]
        if not return_token_type_ids:
            del data["token_type_ids"]
        if single and return_tensors is None:
            data = {key: value[0] for key, value in data.items()}
        return BatchEncoding(data)

    def __repr__(self):
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bpe_ranks={len(self.mergeable_ranks)}, "
            f"vision_tokens={len(self.vision_tokens)}, padding_side={self.padding_side!r})"
        )
