"""The Emu3 text tokenizer: byte-level BPE plus Emu3's special and vision tokens, read from either file layout.

Original BAAI layout: ``emu3.tiktoken`` holds one ``base64(token_bytes) rank`` per line and
``emu3_vision_tokens.txt`` the image/visual token surface forms, one per line. Special ids start right after the
BPE ranks (151643 for the real vocabulary): ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``,
``<|extra_0|>`` .. ``<|extra_204|>``, then the vision tokens in file order. Text is NFC-normalised and split with
Emu3's (Qwen's) regex, as the original does.

transformers' ``-hf`` layout (``BAAI/Emu3-Gen-hf``): ``tokenizer.json`` is read with the ``tokenizers`` package and
behaves as that file says: GPT-2's split regex and no NFC step (so a few strings, e.g. ``".\n"`` or decomposed
Unicode, get other ids than the original), every special token listed in ``added_tokens`` with its id, and
``<image>`` (the image placeholder) in place of ``<|extra_0|>`` (which becomes plain text). Role tokens come from
``tokenizer_config.json`` (``image_wrapper_token`` is our ``img_token``; eol is ``<|extra_200|>``).
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
HF_TOKENIZER_FILE = "tokenizer.json"
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
IMAGE_PLACEHOLDER = "<image>"

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
# tokenizer_config.json names of transformers' Emu3 tokenizer -> our role names
HF_ROLE_NAMES = {"image_wrapper_token": "img_token"}

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


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE vocabularies (``tokenizer.json``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    printable += list(range(ord("\xae"), ord("\xff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class TiktokenVocab:
    """The original files: BPE ranks (``emu3.tiktoken``, tiktoken) and the vision tokens that follow the specials."""

    def __init__(self, vocab_file, special_tokens_file):
        for name, path in (("vocab_file", vocab_file), ("special_tokens_file", special_tokens_file)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Emu3Tokenizer: {name} not found: {path}")
        self.mergeable_ranks = load_tiktoken_bpe(vocab_file)
        self.vision_tokens = load_vision_tokens(special_tokens_file)
        start = len(self.mergeable_ranks)
        names = (ENDOFTEXT, IMSTART, IMEND) + EXTRAS + tuple(self.vision_tokens)
        if len(set(names)) != len(names):
            raise ValueError(f"{special_tokens_file} repeats one of the built-in special tokens")
        self.special_tokens = {token: start + i for i, token in enumerate(names)}
        self.added_text_tokens = {}
        self.encoding = tiktoken.Encoding(
            "Emu3", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks, special_tokens=self.special_tokens
        )

    def encode(self, text):
        return self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")

    def encode_batch(self, texts):
        return self.encoding.encode_batch([unicodedata.normalize("NFC", t) for t in texts], allowed_special="all")

    def decode_bytes(self, ids):
        return self.encoding.decode_bytes(ids)


class TokenizerJsonVocab:
    """transformers' ``tokenizer.json`` (byte-level BPE), read and run by the ``tokenizers`` package."""

    def __init__(self, tokenizer_file):
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(f"Emu3Tokenizer: tokenizer_file not found: {tokenizer_file}")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError(f"reading {tokenizer_file} needs the tokenizers package: pip install tokenizers") from None
        with open(tokenizer_file, encoding="utf-8") as f:
            spec = json.load(f)
        kinds = ((spec.get("model") or {}).get("type"), (spec.get("decoder") or {}).get("type"))
        if kinds != ("BPE", "ByteLevel"):
            raise ValueError(f"{tokenizer_file}: expected a byte-level BPE tokenizer (model BPE, decoder ByteLevel), "
                             f"got model {kinds[0]!r}, decoder {kinds[1]!r}")
        self.encoding = Tokenizer.from_file(tokenizer_file)
        added = {t["content"]: t for t in spec.get("added_tokens", [])}
        self.special_tokens = {token: t["id"] for token, t in added.items() if t.get("special")}
        # added tokens not marked special: one id each, but kept by decode(skip_special_tokens=True)
        self.added_text_tokens = {token: t["id"] for token, t in added.items() if not t.get("special")}
        to_byte = {c: b for b, c in bytes_to_unicode().items()}
        self.mergeable_ranks = {}
        self._bytes = {}
        for token, i in self.encoding.get_vocab(with_added_tokens=True).items():
            byte_level = all(c in to_byte for c in token)
            if token not in added and not byte_level:
                raise ValueError(f"{tokenizer_file}: BPE token {token!r} is not written in the byte-level alphabet")
            # the ByteLevel decoder maps an added token's characters only when all are in its table
            raw = bytes(to_byte[c] for c in token) if byte_level else token.encode("utf-8")
            if token not in added:
                self.mergeable_ranks[raw] = i
            self._bytes[i] = raw
        if sorted(self._bytes) != list(range(len(self._bytes))):
            raise ValueError(f"{tokenizer_file}: token ids must be 0..{len(self._bytes) - 1} with no gaps")
        self.vision_tokens = [
            t for t in sorted(self.special_tokens, key=self.special_tokens.get)
            if t not in (ENDOFTEXT, IMSTART, IMEND, IMAGE_PLACEHOLDER) + EXTRAS
        ]

    def encode(self, text):
        return self.encoding.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        # one by one: the batch call starts the tokenizers thread pool, which then warns in every forked process
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids):
        return b"".join(self._bytes[i] for i in ids)


class Emu3Tokenizer:
    """Emu3's tokenizer: ids compatible with the original (``emu3.tiktoken``) or with transformers (``tokenizer.json``).

    Special-token surface forms inside text (``<|image start|>``, ``<|visual token 000042|>``, ...) encode as the
    special ids. No BOS is added: the processor builds prompts. See the module docstring for the two file layouts.

    Args:
        vocab_file: path of ``emu3.tiktoken`` (original layout).
        special_tokens_file: path of ``emu3_vision_tokens.txt`` (original layout).
        tokenizer_file: path of transformers' ``tokenizer.json`` (-hf layout), instead of the two files above.
        errors: how decoding treats broken UTF-8 (``"replace"`` gives U+FFFD).
        padding_side: ``"left"`` (what generation needs) or ``"right"``.
        bos_token .. eof_token: surface forms of the role tokens.
        image_token: the image placeholder of transformers-style prompts (a special token only in -hf files).
        unk_token: transformers' unknown token (default: pad_token; byte-level BPE never needs it).
    """

    def __init__(
        self,
        vocab_file=None,
        special_tokens_file=None,
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
        tokenizer_file=None,
        image_token=IMAGE_PLACEHOLDER,
        unk_token=None,
    ):
        if tokenizer_file is not None:
            if vocab_file is not None or special_tokens_file is not None:
                raise ValueError("give either tokenizer_file or vocab_file + special_tokens_file, not both")
            self.vocab = TokenizerJsonVocab(tokenizer_file)
        elif vocab_file is None or special_tokens_file is None:
            raise ValueError("Emu3Tokenizer needs vocab_file and special_tokens_file, or tokenizer_file")
        else:
            self.vocab = TiktokenVocab(vocab_file, special_tokens_file)
        self.vocab_file = vocab_file
        self.special_tokens_file = special_tokens_file
        self.tokenizer_file = tokenizer_file
        self.errors = errors
        self.padding_side = padding_side
        self.mergeable_ranks = self.vocab.mergeable_ranks
        self.vision_tokens = self.vocab.vision_tokens
        self.special_tokens = self.vocab.special_tokens
        self.tokenizer = self.vocab.encoding
        self._id_to_token = {rank: token for token, rank in self.mergeable_ranks.items()}
        self._id_to_token.update({i: token for token, i in self.vocab.added_text_tokens.items()})
        self._id_to_token.update({i: token for token, i in self.special_tokens.items()})
        if sorted(self._id_to_token) != list(range(len(self._id_to_token))):
            raise ValueError("the BPE and special token ids must together be 0..n-1 with no gaps or repeats")
        self._is_special = np.zeros(len(self._id_to_token), dtype=bool)
        self._is_special[list(self.special_tokens.values())] = True
        if ENDOFTEXT not in self.special_tokens:
            raise ValueError(f"the vocabulary has no {ENDOFTEXT} special token")
        self.eod_id = self.special_tokens[ENDOFTEXT]
        self.image_token = image_token

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
        self.unk_token = pad_token if unk_token is None else unk_token
        if self.unk_token not in self.special_tokens:
            raise ValueError(f"unk_token {self.unk_token!r} is not a special token of this vocabulary")

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
    unk_token_id = property(lambda self: self.special_tokens[self.unk_token])
    # None where the placeholder is plain text (original files): the processor expands it before tokenizing
    image_token_id = property(lambda self: self.special_tokens.get(self.image_token))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, padding_side="left", **kwargs):
        """Load from a folder (or hub repo id) holding emu3.tiktoken and emu3_vision_tokens.txt (original layout) or,
        when there is no emu3.tiktoken, transformers' tokenizer.json (-hf layout).

        ``tokenizer_config.json`` and ``special_tokens_map.json`` are read when present (role tokens, ``errors``,
        the -hf names ``image_wrapper_token`` / ``image_token`` / ``unk_token``); keyword arguments override them.
        """
        path = resolve_model_dir(pretrained_model_name_or_path)
        settings = {}
        for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    for key, value in json.load(f).items():
                        key = HF_ROLE_NAMES.get(key, key)
                        if key in ROLE_TOKENS or key in ("image_token", "unk_token"):
                            # special_tokens_map may hold {"content": "<|...|>", ...} entries
                            settings[key] = value["content"] if isinstance(value, dict) else value
                        elif key == "errors":
                            settings[key] = value
        settings.update(kwargs)
        if os.path.isfile(os.path.join(path, VOCAB_FILE)):
            vision_file = os.path.join(path, VISION_TOKENS_FILE)
            if not os.path.isfile(vision_file):
                raise FileNotFoundError(f"{VISION_TOKENS_FILE} not found in {path}")
            return cls(os.path.join(path, VOCAB_FILE), vision_file, padding_side=padding_side, **settings)
        if os.path.isfile(os.path.join(path, HF_TOKENIZER_FILE)):
            return cls(tokenizer_file=os.path.join(path, HF_TOKENIZER_FILE), padding_side=padding_side, **settings)
        raise FileNotFoundError(
            f"{VOCAB_FILE} not found in {path}, nor transformers' {HF_TOKENIZER_FILE}: not an Emu3 tokenizer folder"
        )

    def save_pretrained(self, save_directory):
        """Write the files this tokenizer was read from (emu3.tiktoken and emu3_vision_tokens.txt, or tokenizer.json),
        tokenizer_config.json and special_tokens_map.json."""
        os.makedirs(save_directory, exist_ok=True)
        if self.tokenizer_file is not None:
            self.tokenizer.save(os.path.join(save_directory, HF_TOKENIZER_FILE))
        else:
            with open(os.path.join(save_directory, VOCAB_FILE), "w", encoding="utf-8") as f:
                for token, rank in sorted(self.mergeable_ranks.items(), key=lambda item: item[1]):
                    f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")
            with open(os.path.join(save_directory, VISION_TOKENS_FILE), "w", encoding="utf-8") as f:
                f.writelines(token + "\n" for token in self.vision_tokens)
        roles = {role: getattr(self, role) for role in ROLE_TOKENS}
        config = {"tokenizer_class": type(self).__name__, "errors": self.errors, **roles}
        config.update(image_token=self.image_token, unk_token=self.unk_token)
        with open(os.path.join(save_directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(save_directory, SPECIAL_TOKENS_MAP_FILE), "w", encoding="utf-8") as f:
            json.dump({key: roles[key] for key in ("bos_token", "eos_token", "pad_token")}, f, indent=2)
        return save_directory

    @property
    def vocab_size(self):
        return len(self._id_to_token)

    def __len__(self):
        return len(self._id_to_token)

    def get_vocab(self):
        """Every token (bytes for BPE tokens, str for special tokens) with its id."""
        return {token: i for i, token in self._id_to_token.items()}

    def encode(self, text):
        """Token ids of ``text`` (special-token surface forms become special ids; no BOS). The original files
        NFC-normalise the text first; tokenizer.json does not."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.vocab.encode(text)

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
            if tokens in self.vocab.added_text_tokens:
                return self.vocab.added_text_tokens[tokens]
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
        """Text of ``token_ids``. ``skip_special_tokens`` drops every special token (all special and vision tokens;
        with tokenizer.json, the added tokens marked special). Broken UTF-8 becomes U+FFFD (``errors="replace"``)."""
        ids = self._checked_ids(token_ids)
        if skip_special_tokens:
            ids = ids[~self._is_special[ids]]
        return self.vocab.decode_bytes(ids.tolist()).decode("utf-8", errors=errors or self.errors)

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

        rows = self.vocab.encode_batch(texts)
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
