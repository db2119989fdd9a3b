"""Image processor of the Emu3 vision tokenizer (``preprocessor_config.json``, or the ``image_processor`` entry of
transformers' ``processor_config.json`` in an ``-hf`` folder).

Preprocessing, as the original: convert to RGB with PIL, resize with ``smart_resize`` (multiples of
``spatial_factor``, pixel count within ``[min_pixels, max_pixels]``) using PIL's resampling filter, rescale by
``rescale_factor`` (float64, stored as float32), normalize with ``image_mean`` / ``image_std`` (float32), channels
first. ``postprocess`` inverts that and truncates to uint8.
"""

import json
import logging
import math
import os

import numpy as np
import paddle
from PIL import Image, UnidentifiedImageError

from ..configuration_utils import read_json_object, reject_unknown_fields, resolve_model_dir

logger = logging.getLogger(__name__)

PREPROCESSOR_NAME = "preprocessor_config.json"
HF_PROCESSOR_NAME = "processor_config.json"
# do_pad: transformers pads a batch of differently sized images; here such a batch is an error (see preprocess)
_META_KEYS = {"image_processor_type", "processor_class", "_processor_class", "auto_map", "size", "do_pad"}
# transformers 5 spells the pixel bounds size={"shortest_edge": min_pixels, "longest_edge": max_pixels}
_SIZE_KEYS = {"min_pixels": ("min_pixels", "shortest_edge"), "max_pixels": ("max_pixels", "longest_edge")}
MAX_ASPECT_RATIO = 5


def smart_resize(height, width, factor=8, min_pixels=512 * 512, max_pixels=1024 * 1024):
    """The (height, width) an image is resized to: multiples of ``factor``, area within [min_pixels, max_pixels].

    Both sides are rounded to the nearest multiple with Python's ``round`` (half to even); when the area is too
    large both sides are scaled down and floored, when too small scaled up and ceiled. Sides shorter than
    ``factor`` and aspect ratios above 5 are rejected (ValueError).
    """
    if height < factor or width < factor:
        raise ValueError(f"image of {height}x{width} pixels: both sides must be at least {factor} (the spatial factor)")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"image of {height}x{width} pixels: aspect ratio {ratio:.3f} is above {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class BatchFeature(dict):
    """A dict whose keys are also attributes (``out["pixel_values"]`` or ``out.pixel_values``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _to_numpy(x):
    if isinstance(x, paddle.Tensor):
        return x.astype("float32").numpy() if x.dtype in (paddle.bfloat16, paddle.float16) else x.numpy()
    return np.asarray(x)


class Emu3VisionVQImageProcessor:
    """Turns PIL images (or file paths, or uint8 arrays) into normalized ``pixel_values`` and back.

    ``__call__(images, return_tensors=None|"np"|"pd")`` -> ``BatchFeature(pixel_values=[N, 3, H, W] float32)``: one
    image gives N=1, a list gives N=len(list) (all must resize to the same size, e.g. the frames of a video).
    ``postprocess(pixel_values, return_tensors="PIL.Image.Image"|"np")`` -> ``BatchFeature(pixel_values=...)``: a
    list of PIL RGB images, or a uint8 array [N, H, W, 3].
    """

    def __init__(
        self,
        do_resize=True,
        resample=Image.Resampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        do_convert_rgb=True,
        min_pixels=512 * 512,
        max_pixels=1024 * 1024,
        spatial_factor=8,
    ):
        self.do_resize = bool(do_resize)
        self.resample = int(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = self._per_channel(image_mean, "image_mean")
        self.image_std = self._per_channel(image_std, "image_std")
        self.do_convert_rgb = bool(do_convert_rgb)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.spatial_factor = int(spatial_factor)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        if self.rescale_factor == 0:
            raise ValueError("rescale_factor must not be 0")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.spatial_factor <= 0:
            raise ValueError(f"spatial_factor must be positive, got {self.spatial_factor}")
        try:
            Image.Resampling(self.resample)
        except ValueError:
            raise ValueError(f"resample={self.resample} is not a PIL resampling filter") from None

    @staticmethod
    def _per_channel(value, name):
        values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != 3:
            raise ValueError(f"{name} needs 3 values (R, G, B), got {values}")
        return values

    @property
    def size(self):
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    # ------------------------------------------------------------------ config files
    def to_dict(self):
        return {
            "do_resize": self.do_resize,
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": self.do_convert_rgb,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "spatial_factor": self.spatial_factor,
        }

    @classmethod
    def from_dict(cls, d, source="image processor config"):
        d = dict(d)
        size = d.get("size")
        if isinstance(size, dict):
            for key, names in _SIZE_KEYS.items():
                for name in names:
                    if name in size:
                        d.setdefault(key, size[name])
        fields = set(cls().to_dict())
        reject_unknown_fields(d, fields, _META_KEYS, cls.__name__, source)
        return cls(**{k: v for k, v in d.items() if k in fields})

    @classmethod
    def from_pretrained(cls, path_or_repo_id):
        """Read ``preprocessor_config.json`` from a folder (or a hub repo id), or else the settings nested under
        ``image_processor`` in transformers' ``processor_config.json`` (the -hf layout)."""
        folder = resolve_model_dir(path_or_repo_id)
        path = os.path.join(folder, PREPROCESSOR_NAME)
        if os.path.isfile(path):
            return cls.from_dict(read_json_object(path), source=path)
        hf_path = os.path.join(folder, HF_PROCESSOR_NAME)
        if not os.path.isfile(hf_path):
            raise FileNotFoundError(f"{PREPROCESSOR_NAME} (or transformers' {HF_PROCESSOR_NAME}) not found in {folder}")
        settings = read_json_object(hf_path).get("image_processor")
        if not isinstance(settings, dict):
            raise ValueError(f"{hf_path} has no image_processor settings (an object under 'image_processor')")
        return cls.from_dict(settings, source=f"{hf_path} (image_processor)")

    def save_pretrained(self, save_dir):
        os.makedirs(save_dir, exist_ok=True)
        d = dict(self.to_dict(), size=self.size, image_processor_type=type(self).__name__)
        with open(os.path.join(save_dir, PREPROCESSOR_NAME), "w", encoding="utf-8") as f:
            json.dump(d, f, indent=2, sort_keys=True)
            f.write("\n")

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"{type(self).__name__} {json.dumps(self.to_dict(), sort_keys=True)}"

    # ------------------------------------------------------------------ preprocessing
    @staticmethod
    def _load(image):
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"image file not found: {path}")
            try:
                with Image.open(path) as im:
                    im.load()
                    return im.copy()
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise ValueError(f"cannot read {path} as an image ({type(e).__name__}: {e})") from None
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, np.ndarray):
            channels = image.shape[2] if image.ndim == 3 else 1
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or channels not in (1, 3, 4):
                raise ValueError(
                    f"numpy images must be uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got {image.dtype} "
                    f"{list(image.shape)}"
                )
            return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        raise ValueError(
            f"not an image: expected a PIL image, a file path or a uint8 array, got {type(image).__name__}"
        )

    def _preprocess_one(self, image):
        image = self._load(image)
        if self.do_convert_rgb and image.mode != "RGB":
            if image.mode.startswith("I;16") or image.mode == "I":
                logger.warning(
                    "converting a %s (16/32-bit) image to RGB with PIL, as the original does: values above 255 "
                    "saturate to 255",
                    image.mode,
                )
            image = image.convert("RGB")
        if self.do_resize:
            height, width = smart_resize(
                image.height, image.width, self.spatial_factor, self.min_pixels, self.max_pixels
            )
            image = image.resize((width, height), resample=Image.Resampling(self.resample))
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.do_normalize and arr.shape[2] != len(self.image_mean):
            raise ValueError(
                f"a {image.mode} image has {arr.shape[2]} channels but image_mean has {len(self.image_mean)} values; "
                "use do_convert_rgb=True"
            )
        if self.do_rescale:
            arr = (arr.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            arr = arr.astype(np.float32, copy=False)
            arr = (arr - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, images, return_tensors=None):
        return self.preprocess(images, return_tensors=return_tensors)

    def preprocess(self, images, return_tensors=None):
        """One image (PIL, path or uint8 array) or a list of them -> ``BatchFeature(pixel_values=[N,3,H,W])``."""
        if return_tensors not in (None, "np", "pd"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pd', got {return_tensors!r}")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("no images given")
        arrays = [self._preprocess_one(image) for image in items]
        sizes = sorted({a.shape[1:] for a in arrays})
        if len(sizes) > 1:
            raise ValueError(
                f"the images resize to different sizes {[list(s) for s in sizes]}; a batch (or the frames of a "
                "video) must share one size: process them one by one"
            )
        pixel_values = np.stack(arrays)
        if return_tensors == "pd":
            pixel_values = paddle.to_tensor(pixel_values)
        return BatchFeature(pixel_values=pixel_values)

    # ------------------------------------------------------------------ postprocessing
    def postprocess(self, pixel_values, return_tensors="PIL.Image.Image"):
        """Normalized pixels ``[3,H,W]``, ``[N,3,H,W]`` or ``[B,T,3,H,W]`` (tensor or array) -> images.

        Inverts normalize (float32) and rescale (float64, stored as float32), clips to [0, 255] and truncates to
        uint8, as the original. ``return_tensors="PIL.Image.Image"``: a list of PIL RGB images (frames flattened in
        order); ``"np"``: a uint8 array ``[N, H, W, 3]``.
        """
        if return_tensors not in ("PIL.Image.Image", "np"):
            raise ValueError(f"return_tensors must be 'PIL.Image.Image' or 'np', got {return_tensors!r}")
        if not isinstance(pixel_values, (paddle.Tensor, np.ndarray)):
            raise ValueError(f"pixel_values must be a paddle.Tensor or numpy array, got {type(pixel_values).__name__}")
        x = _to_numpy(pixel_values)
        if x.ndim not in (3, 4, 5) or x.shape[-3] != 3:
            raise ValueError(f"pixel_values must be [3,H,W], [N,3,H,W] or [B,T,3,H,W], got shape {list(x.shape)}")
        if x.dtype.kind != "f":
            raise ValueError(f"pixel_values must be floating point (normalized pixels), got {x.dtype}")
        if not np.isfinite(x).all():
            raise ValueError("pixel_values hold NaN or infinite values (a decode in float16 that overflowed?)")
        if not self.do_rescale:
            raise ValueError("postprocess needs do_rescale=True to produce 8-bit images")
        x = x.reshape((-1,) + x.shape[-3:]).astype(np.float32, copy=False)
        if self.do_normalize:
            mean = np.asarray([-m / s for m, s in zip(self.image_mean, self.image_std)], np.float32)[:, None, None]
            std = np.asarray([1 / s for s in self.image_std], np.float32)[:, None, None]
            x = (x - mean) / std
        x = (x.astype(np.float64) * (1 / self.rescale_factor)).astype(np.float32)
        x = np.ascontiguousarray(x.clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1))
        if return_tensors == "np":
            return BatchFeature(pixel_values=x)
        return BatchFeature(pixel_values=[Image.fromarray(frame) for frame in x])
