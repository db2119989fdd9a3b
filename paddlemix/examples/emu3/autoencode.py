"""Encode images and videos to Emu3 visual codes and decode them back (the vision tokenizer's round trip).

For every input the script prints the code grid shape and the PSNR of the reconstruction against the
preprocessed (resized) input, and writes the reconstruction as PNG into --output_dir.

Examples:
  python paddlemix/examples/emu3/autoencode.py --model_path BAAI/Emu3-VisionTokenizer \\
      --image_path demo_images/emu3_demo.png --output_dir out
  python paddlemix/examples/emu3/autoencode.py --model_path path/to/vision_tokenizer \\
      --image_path folder_of_images --video_path folder_of_frames --output_dir out
  # transformers' -hf folder (BAAI/Emu3-Gen-hf holds the vision tokenizer too)
  python paddlemix/examples/emu3/autoencode.py --model_path BAAI/Emu3-Gen-hf --output_dir out

A video is a folder of frame images, read in file-name order and encoded in clips of
temporal_downsample_factor frames (4 for Emu3), as the original autoencode example does. When the frame count is not
a multiple of that, the last frame is repeated to fill the last clip; only the real frames are written.

Under ``python -m paddle.distributed.launch --nproc_per_node N`` the images are shared out over the processes (data
parallel, whatever --parallel says: the vision tokenizer is not split), a video runs on rank 0, and rank 0 prints.
"""

import argparse
import os

import numpy as np
from PIL import Image

from paddlemix import set_cpu_threads
from paddlemix.cli import USER_ERRORS, run
from paddlemix.distributed import Launch, is_main
from paddlemix.models.emu3 import Emu3VisionVQImageProcessor, Emu3VisionVQModel

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEFAULT_IMAGE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "demo_images", "emu3_demo.png")


def list_images(folder):
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names]


def psnr(reference, reconstruction):
    """PSNR in dB of two uint8 arrays of the same shape (inf when identical)."""
    mse = np.mean((reference.astype(np.float64) - reconstruction.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def autoencode_image(model, processor, path, output_dir):
    pixel_values = processor(path, return_tensors="pd")["pixel_values"]
    codes = model.encode(pixel_values)
    recon = model.decode(codes)
    reference = processor.postprocess(pixel_values, return_tensors="np")["pixel_values"][0]
    result = processor.postprocess(recon, return_tensors="np")["pixel_values"][0]
    out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + "_recon.png")
    Image.fromarray(result).save(out)
    return f"{path}: codes {list(codes.shape[1:])}, PSNR {psnr(reference, result):.2f} dB -> {out}"


def autoencode_video(model, processor, folder, output_dir):
    frames = list_images(folder)
    if not frames:
        raise FileNotFoundError(f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    factor = model.config.temporal_downsample_factor
    n = len(frames)
    padded = frames + [frames[-1]] * (-n % factor)
    if len(padded) != n:
        print(
            f"{folder}: {n} frames is not a multiple of {factor}: repeating the last frame {len(padded) - n} time(s) "
            "to fill the last clip (only the real frames are written)"
        )
    pixel_values = processor(padded, return_tensors="pd")["pixel_values"]
    video_dir = os.path.join(output_dir, os.path.basename(os.path.normpath(folder)) + "_recon")
    os.makedirs(video_dir, exist_ok=True)
    references, results, grids = [], [], []
    for start in range(0, len(padded), factor):
        clip = pixel_values[start : start + factor].unsqueeze(0)
        codes = model.encode(clip)
        grids.append(list(codes.shape[1:]))
        recon = model.decode(codes)
        references.append(processor.postprocess(clip, return_tensors="np")["pixel_values"])
        results.append(processor.postprocess(recon, return_tensors="np")["pixel_values"])
    reference = np.concatenate(references)[:n]
    result = np.concatenate(results)[:n]
    for path, frame in zip(frames, result):
        Image.fromarray(frame).save(os.path.join(video_dir, os.path.splitext(os.path.basename(path))[0] + "_recon.png"))
    print(
        f"{folder}: {n} frames, {len(grids)} clip(s), codes per clip {grids[0]}, "
        f"PSNR {psnr(reference, result):.2f} dB -> {video_dir}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="BAAI/Emu3-VisionTokenizer", help="vision tokenizer folder or hub id")
    parser.add_argument("--image_path", help="an image file or a folder of images (default: the demo image)")
    parser.add_argument("--video_path", help="a folder of video frames, read in file-name order")
    parser.add_argument("--output_dir", default="autoencode_output", help="where the reconstructions are written")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: every CPU, shared among the processes of a launch)")
    parser.add_argument("--parallel", choices=["tensor", "data"],
                        help="accepted as by the other scripts; launched processes always share the images out")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="float32 as the original; bf16/fp16 need a GPU and change the codes",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    launch = Launch("data")  # the vision tokenizer is not split: images are shared out
    set_cpu_threads(args.threads)
    if args.image_path is None and args.video_path is None:
        args.image_path = os.path.normpath(DEFAULT_IMAGE)

    try:
        model = Emu3VisionVQModel.from_pretrained(args.model_path, dtype=args.dtype)
        processor = Emu3VisionVQImageProcessor.from_pretrained(args.model_path)
    except USER_ERRORS as e:
        parser.error(f"cannot load the vision tokenizer from {args.model_path}: {e}")
    os.makedirs(args.output_dir, exist_ok=True)
    failures = 0

    if args.image_path is not None:
        if os.path.isdir(args.image_path):
            images = list_images(args.image_path)
            if not images:
                parser.error(f"no images in {args.image_path}")
        elif os.path.isfile(args.image_path):
            images = [args.image_path]
        else:
            parser.error(f"--image_path {args.image_path} does not exist")
        lines = []
        for i in launch.mine(len(images), "images"):  # this process's share of the images
            try:
                lines.append((i, autoencode_image(model, processor, images[i], args.output_dir), False))
            except ValueError as e:
                lines.append((i, f"{images[i]}: skipped ({e})", True))
        lines = launch.gather(lines)
        for _, line, _ in sorted(lines):
            print(line)
        failures = sum(failed for _, _, failed in lines)
    if args.video_path is not None and is_main():
        if not os.path.isdir(args.video_path):
            parser.error(f"--video_path {args.video_path} is not a folder of frames")
        autoencode_video(model, processor, args.video_path, args.output_dir)
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
