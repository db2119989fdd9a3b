"""Draw demo_images/emu3_demo.png: a 256x256 RGB test picture made by this project (gradients and shapes).

Usage: python demo_images/make_demo_image.py [--output PATH]
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw


def make_demo_image(size=256):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    rgb = np.stack([xx, yy, 1.0 - 0.5 * (xx + yy)], axis=-1)
    rgb += 0.08 * np.sin(2 * np.pi * 6 * xx)[..., None]
    image = Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([30 * s, 40 * s, 120 * s, 130 * s], fill=(230, 60, 50), outline=(20, 20, 20), width=max(1, int(3 * s)))
    draw.rectangle([140 * s, 30 * s, 225 * s, 110 * s], fill=(250, 210, 40))
    draw.polygon([(60 * s, 230 * s), (128 * s, 150 * s), (196 * s, 230 * s)], fill=(40, 150, 80))
    draw.line([(0, size - 1), (size - 1, 0)], fill=(255, 255, 255), width=max(1, int(2 * s)))
    for i in range(8):
        c = int(255 * i / 7)
        draw.rectangle([(150 + 12 * i) * s, 150 * s, (160 + 12 * i) * s, 200 * s], fill=(c, c, c))
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "emu3_demo.png"))
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    make_demo_image(args.size).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
