"""Prepare fine-tuning data for Emu3: encode every image of a data list into visual codes once (the original's
emu3/train/prepare_data.py).

Examples:
  python paddlemix/examples/emu3/prepare_data.py --model_path BAAI/Emu3-VisionTokenizer \\
      --data_path data.json --output_path prepared
  # the fixtures' 4-sample set with the tiny vision tokenizer
  python paddlemix/examples/emu3/prepare_data.py --model_path ../shared/fixtures/public/vision_tokenizer \\
      --data_path ../shared/fixtures/public/sft/data.json --output_path prepared --image_area 1024

data.json is a list of {"name", "image", "text"} (text-to-image), {"name", "image", "question", "answer"} (VQA) or
{"name", "text"} (text only). A relative image path is tried against the current folder (as the original), then
against the folder of data.json. Each image is converted to RGB, resized to about --image_area pixels (the original's
smart_resize), prepared by the vision tokenizer's image processor and encoded; images of the same processed size are
encoded together, --batch_size at a time. Written: OUT/feature/<name>.npz (name, images = the code grid, texts; VQA
items also question and answer) and OUT/list/train.json ({"prefix", "path_list"}), the input of train_sft.py.
Running again skips the samples already written. An image that is missing or cannot be read is reported by name and
left out of the list; the other samples are still written.
"""

import argparse
import logging
import os

import numpy as np
import paddle
from tqdm.auto import tqdm

from paddlemix import set_cpu_threads
from paddlemix.cli import USER_ERRORS, run
from paddlemix.models.emu3 import Emu3VisionVQImageProcessor, Emu3VisionVQModel
from paddlemix.trainer.data_prep import (
    DEFAULT_IMAGE_AREA,
    feature_path,
    is_prepared,
    load_pixels,
    read_input_list,
    resolve_image_path,
    write_data_list,
    write_feature,
)

logger = logging.getLogger("prepare_data")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True,
                        help="vision tokenizer folder or hub id")
    parser.add_argument("--data_path", "--data-path", dest="data_path", required=True, help="the input JSON list")
    parser.add_argument("--output_path", "--output-path", dest="output_path", required=True,
                        help="folder for feature/ and list/")
    parser.add_argument("--image_area", "--image-area", dest="image_area", type=int, default=DEFAULT_IMAGE_AREA,
                        help="pixels each image is resized to before the image processor (default 720*720; use the "
                             "image_area of the LM's config.json)")
    parser.add_argument("--batch_size", type=int, default=8, help="images of one processed size encoded together")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every CPU); Paddle alone uses one")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="vision tokenizer dtype (bf16/fp16 need a GPU)")
    args = parser.parse_args(argv)
    for flag in ("image_area", "batch_size", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be positive")
    if os.path.exists(args.output_path) and not os.path.isdir(args.output_path):
        parser.error(f"--output_path {args.output_path} exists and is not a folder")
    return args


class Encoder:
    """Collects prepared images by processed size and encodes them in batches; writes each sample's feature file."""

    def __init__(self, model, output_path, batch_size, bar):
        self.model = model
        self.output_path = output_path
        self.batch_size = batch_size
        self.bar = bar
        self.pending = {}  # (H, W) -> [(item, pixel_values [1, 3, H, W])]
        self.written = []

    def add(self, item, pixels):
        bucket = self.pending.setdefault(tuple(pixels.shape[2:]), [])
        bucket.append((item, pixels))
        if len(bucket) >= self.batch_size:
            self.flush(tuple(pixels.shape[2:]))
        elif sum(len(b) for b in self.pending.values()) >= 4 * self.batch_size:
            self.flush(max(self.pending, key=lambda size: len(self.pending[size])))

    def flush(self, size=None):
        for key in [size] if size is not None else list(self.pending):
            batch = self.pending.pop(key)
            codes = self.model.encode(paddle.to_tensor(np.concatenate([p for _, p in batch]))).numpy()
            for (item, _), grid in zip(batch, codes):
                write_feature(feature_path(self.output_path, item.name), item.feature_fields(), grid)
                self.written.append(item.name)
                self.bar.update(1)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    items = read_input_list(args.data_path)
    prepared = [is_prepared(feature_path(args.output_path, item.name), item) for item in items]
    todo = [item for item, ready in zip(items, prepared) if not ready]
    done = len(items) - len(todo)
    logger.info("%d samples in %s: %d already prepared, %d to prepare", len(items), args.data_path, done, len(todo))

    model = processor = None
    if any(item.image is not None for item in todo):
        set_cpu_threads(args.threads)
        try:
            processor = Emu3VisionVQImageProcessor.from_pretrained(args.model_path)
            model = Emu3VisionVQModel.from_pretrained(args.model_path, dtype=args.dtype)
        except USER_ERRORS as e:
            raise type(e)(f"cannot load the vision tokenizer from {args.model_path}: {e}") from None
        model.eval()

    failed = {}
    with tqdm(total=len(items), initial=done, desc="prepare_data", unit="sample") as bar:
        encoder = Encoder(model, args.output_path, args.batch_size, bar)
        for item in todo:
            if item.image is None:
                write_feature(feature_path(args.output_path, item.name), item.feature_fields())
                encoder.written.append(item.name)
                bar.update(1)
                continue
            try:
                pixels = load_pixels(resolve_image_path(item.image, args.data_path), processor, args.image_area)
            except (FileNotFoundError, ValueError) as e:
                failed[item.name] = str(e)
                logger.warning("skipping %s: %s", item.name, e)
                bar.update(1)
                continue
            encoder.add(item, pixels)
        encoder.flush()

    ready = [item.name for item in items if item.name not in failed]
    list_path = write_data_list(args.output_path, ready)
    print(f"wrote {len(encoder.written)} samples, {done} were already prepared, {len(failed)} skipped; "
          f"list of {len(ready)} samples: {list_path}")
    if failed:
        print(f"skipped (missing or unreadable image): {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    run(main)
