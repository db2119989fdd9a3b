"""Prepared fine-tuning data: the input list of ``prepare_data.py``, its image resize, and the files it writes.

Input (the original ``emu3/train/prepare_data.py`` format, extended): a JSON list of items, each one of
  * text-to-image ``{"name", "image", "text"}``,
  * VQA ``{"name", "image", "question", "answer"}`` (an optional ``"text"`` is kept too),
  * text only ``{"name", "text"}``.

Output (one folder ``OUT``):
  * ``OUT/feature/<name>.npz`` (``np.savez``, no pickle; strings as numpy unicode scalars): ``name``, ``images``
    (the int64 ``[h, w]`` code grid, absent for text-only items), ``texts``, and for VQA items ``question`` and
    ``answer``;
  * ``OUT/list/train.json`` = ``{"prefix": "<OUT>/feature", "path_list": ["<name>.npz", ...]}`` (the original's
    keys; the prefix is spelled as ``OUT`` was given, as the original does).
"""

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

DEFAULT_IMAGE_AREA = 720 * 720
FEATURE_DIR = "feature"
LIST_PATH = os.path.join("list", "train.json")
_STRING_KEYS = ("name", "texts", "question", "answer")
_ITEM_KINDS = {
    # kind: (required fields, optional fields)
    "t2i": ({"name", "image", "text"}, set()),
    "vqa": ({"name", "image", "question", "answer"}, {"text"}),
    "text": ({"name", "text"}, set()),
}


@dataclass(frozen=True)
class DataItem:
    """One entry of the input list; ``image`` is the path as written in the JSON (None for text-only items)."""

    name: str
    kind: str
    text: str
    image: Optional[str] = None
    question: Optional[str] = None
    answer: Optional[str] = None

    def feature_fields(self):
        """The string fields of this item's feature file (``images`` is added by the encoder)."""
        fields = {"name": self.name, "texts": self.text}
        if self.kind == "vqa":
            fields.update(question=self.question, answer=self.answer)
        return fields


def area_resize(image, image_area=DEFAULT_IMAGE_AREA):
    """The original ``prepare_data.smart_resize``: scale a PIL image to about ``image_area`` pixels, keeping its aspect
    ratio. Each side becomes ``int(round(side * (image_area / (h * w)) ** 0.5))`` (Python's round, half to even),
    resized with bicubic filtering (PIL's default for RGB images). A side that would round to 0 is a ValueError."""
    if not isinstance(image_area, int) or isinstance(image_area, bool) or image_area <= 0:
        raise ValueError(f"image_area must be a positive integer, got {image_area!r}")
    width, height = image.size
    ratio = (image_area / (height * width)) ** 0.5
    target_h, target_w = int(round(height * ratio)), int(round(width * ratio))
    if target_h < 1 or target_w < 1:
        raise ValueError(
            f"an image of {height}x{width} pixels scaled to an area of {image_area} has a side of 0 pixels "
            f"({target_h}x{target_w})"
        )
    return image.resize((target_w, target_h), resample=Image.Resampling.BICUBIC)


def load_pixels(path, image_processor, image_area=DEFAULT_IMAGE_AREA):
    """An image file -> the processor's ``pixel_values`` ``[1, 3, H, W]`` float32 numpy, as the original prepares it:
    RGB, ``area_resize`` to ``image_area``, then the image processor (its own resize to multiples of the spatial
    factor, rescale, normalize). A file that cannot be read as an image is a ValueError, a missing one a
    FileNotFoundError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read {path} as an image ({type(e).__name__}: {e})") from None
    return image_processor(area_resize(image, image_area), return_tensors="np")["pixel_values"]


def _item_error(data_path, index, item, message):
    name = item.get("name") if isinstance(item, dict) else None
    label = f"item {index}" + (f" ({name!r})" if isinstance(name, str) else "")
    return ValueError(f"{data_path}: {label}: {message}")


def _check_name(name):
    """A sample name becomes a file name: it must be a non-empty string without path separators."""
    if not name.strip():
        return "'name' is empty"
    bad = [c for c in ("/", "\\", "\x00") if c in name]
    if bad or name in (".", ".."):
        return f"'name' {name!r} cannot be a file name (it must not contain {' or '.join(map(repr, bad)) or 'only dots'})"
    return None


def _parse_item(data_path, index, item):
    if not isinstance(item, dict):
        raise _item_error(data_path, index, item, f"expected a JSON object, got {type(item).__name__}")
    keys = set(item)
    kind = "vqa" if keys & {"question", "answer"} else ("t2i" if "image" in keys else "text")
    required, optional = _ITEM_KINDS[kind]
    missing = sorted(required - keys)
    unknown = sorted(keys - required - optional)
    accepted = "; ".join(f"{k}: {sorted(r)}" for k, (r, _) in _ITEM_KINDS.items())
    if missing:
        raise _item_error(data_path, index, item, f"a {kind} item lacks {missing} (items are {accepted})")
    if unknown:
        raise _item_error(data_path, index, item, f"unknown field(s) {unknown} for a {kind} item (items are {accepted})")
    for key in sorted(keys):
        if not isinstance(item[key], str):
            raise _item_error(data_path, index, item, f"field {key!r} must be a string, got {type(item[key]).__name__}")
    problem = _check_name(item["name"])
    if problem:
        raise _item_error(data_path, index, item, problem)
    if "image" in keys and not item["image"].strip():
        raise _item_error(data_path, index, item, "'image' is empty")
    return DataItem(name=item["name"], kind=kind, text=item.get("text", ""), image=item.get("image"),
                    question=item.get("question"), answer=item.get("answer"))


def read_input_list(data_path):
    """Parse and validate the input JSON list: a list of DataItem. Every problem (unreadable or malformed JSON, an
    item of no known kind, a missing or unknown field, a non-string value, a name unusable as a file name, duplicate
    names) is a ValueError/FileNotFoundError naming the file and the item, raised before any work starts."""
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"data list not found: {data_path}")
    with open(data_path, "r", encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{data_path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"{data_path} must hold a JSON list of items, got a {type(data).__name__}")
    if not data:
        raise ValueError(f"{data_path} holds an empty list")
    items = [_parse_item(data_path, i, item) for i, item in enumerate(data)]
    seen, duplicates = set(), []
    for item in items:
        if item.name in seen and item.name not in duplicates:
            duplicates.append(item.name)
        seen.add(item.name)
    if duplicates:
        raise ValueError(f"{data_path}: duplicate names {duplicates} (each name becomes <name>.npz)")
    return items


def resolve_image_path(image, data_path):
    """The file an item's image path points at: as given (absolute, or relative to the current folder, as the
    original), else relative to the JSON file's folder. FileNotFoundError naming the places tried when neither
    exists."""
    if os.path.isabs(image):
        candidates = [image]
    else:
        candidates = [image, os.path.join(os.path.dirname(os.path.abspath(data_path)), image)]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"image not found: {' nor '.join(candidates)}")


def feature_path(output_path, name):
    return os.path.join(output_path, FEATURE_DIR, f"{name}.npz")


def write_feature(path, fields, codes=None):
    """Write one sample's feature file atomically (a temporary file renamed into place, so an interrupted run never
    leaves a truncated file). ``fields``: the string fields; ``codes``: the ``[h, w]`` code grid or None."""
    arrays = {key: np.str_(value) for key, value in fields.items()}
    if codes is not None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be an integer [h, w] grid, got {codes.dtype} {list(codes.shape)}")
        arrays["images"] = codes.astype(np.int64)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_feature(path):
    """One feature file -> dict: the string fields as ``str`` and ``images`` as an int64 ``[h, w]`` array (when
    present). A missing file is a FileNotFoundError; an unreadable, pickled or malformed one a ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"cannot read feature file {path} ({type(e).__name__}: {e})") from None
    unknown = sorted(set(arrays) - set(_STRING_KEYS) - {"images"})
    missing = sorted({"name", "texts"} - set(arrays))
    if unknown or missing:
        raise ValueError(f"feature file {path}: unknown keys {unknown}, missing keys {missing}")
    out = {}
    for key, value in arrays.items():
        if key == "images":
            if value.ndim != 2 or value.dtype != np.int64 or 0 in value.shape:
                raise ValueError(f"feature file {path}: 'images' must be a non-empty int64 [h, w] grid, got "
                                 f"{value.dtype} {list(value.shape)}")
            out[key] = value
        else:
            if value.ndim != 0 or value.dtype.kind != "U":
                raise ValueError(f"feature file {path}: {key!r} must be a string, got {value.dtype} {list(value.shape)}")
            out[key] = str(value)
    if ("question" in out) != ("answer" in out):
        raise ValueError(f"feature file {path}: 'question' and 'answer' go together")
    return out


def is_prepared(path, item):
    """Whether ``path`` already holds this item's features: a complete, loadable file with the item's strings (a
    changed text is prepared again) and a code grid exactly when the item has an image."""
    try:
        feature = read_feature(path)
    except (FileNotFoundError, ValueError):
        return False
    strings = {key: value for key, value in feature.items() if key != "images"}
    return strings == item.feature_fields() and ("images" in feature) == (item.image is not None)


def write_data_list(output_path, names):
    """``OUT/list/train.json`` listing ``<name>.npz`` for ``names`` in order, with the original's keys."""
    path = os.path.join(output_path, LIST_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"prefix": f"{output_path}/{FEATURE_DIR}", "path_list": [f"{name}.npz" for name in names]}, f)
    return path
