"""Generate images from text with Emu3 (text-to-image, the original's image_generation.py).

Examples:
  python paddlemix/examples/emu3/run_generation_inference.py --model_path BAAI/Emu3-Gen \\
      --vq_model_path BAAI/Emu3-VisionTokenizer --prompt "a portrait of young girl." --output_dir outputs
  # a batch with one aspect ratio ("W:H") per prompt, greedy decoding
  python paddlemix/examples/emu3/run_generation_inference.py --model_path DIR --vq_model_path VQ_DIR \\
      --prompt "a portrait of young girl." --ratio 1:1 --prompt "a shiba inu" --ratio 16:9 --greedy
  # transformers' -hf folder: the vision tokenizer and tokenizer come from it too; its config has no image_area,
  # so 518400 (720x720, Emu3-Gen's) is used unless --image_area is given
  python paddlemix/examples/emu3/run_generation_inference.py --model_path BAAI/Emu3-Gen-hf --prompt "a shiba inu"
  # small checkpoints in the fixtures' layout (a folder with llm/, vision_tokenizer/, tokenizer/)
  python paddlemix/examples/emu3/run_generation_inference.py --demo ../shared/fixtures/public --prompt "a cat"
  # several processes (GPUs): the model split over them (--parallel tensor, the default), or the prompts of a file
  # shared out (--parallel data); one prompt per line, optionally a tab and its ratio ("a red fox<TAB>16:9")
  python -m paddle.distributed.launch --nproc_per_node 2 paddlemix/examples/emu3/run_generation_inference.py \
      --model_path DIR --vq_model_path VQ_DIR --prompts_file prompts.txt --parallel data --seed 0

As the official example, each prompt gets the positive suffix " masterpiece, film grained, best quality."
(--no_positive_prompt turns it off) and classifier-free guidance (--cfg_scale, 3.0) runs against the official
negative prompt (--negative_prompt to change it; --negative_prompt "" guides against the prompt's last token, as
transformers does without a negative prompt). Sampling uses top-k 2048 unless --greedy. One PNG per prompt is
written to --output_dir and its path printed (emu3_t2i_<i>.png, i the prompt's index, however the prompts were
shared out). With --seed, prompt i samples from its own stream (seeded by --seed and i), so a prompt gives the same
image whichever batch or process it runs in.
"""

import argparse
import os
import sys

from paddlemix import set_cpu_threads
from paddlemix.cli import run
from paddlemix.distributed import PARALLEL_HELP, Launch, read_prompts_file, request_seed
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.models.emu3.processing_emu3 import Emu3Processor

POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst "
    "quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="BAAI/Emu3-Gen", help="Emu3 generation model folder or hub id")
    parser.add_argument("--vq_model_path", help="vision tokenizer folder or hub id (default: --model_path for a "
                        "transformers -hf folder, else BAAI/Emu3-VisionTokenizer)")
    parser.add_argument("--tokenizer_path", help="folder with emu3.tiktoken or tokenizer.json (default: --model_path)")
    parser.add_argument("--demo", metavar="DIR",
                        help="a folder with llm/, vision_tokenizer/ and tokenizer/ (the fixtures' layout); "
                             "sets the three paths above")
    parser.add_argument("--prompt", action="append", help="a text prompt (repeatable for a batch)")
    parser.add_argument("--prompts_file", help='prompts, one per line, each optionally followed by a tab and its '
                                               'ratio "W:H" (lines without one take --ratio)')
    parser.add_argument("--ratio", action="append",
                        help='aspect ratio "W:H" (default 1:1); one for all prompts or one per prompt')
    parser.add_argument("--image_area", type=int, help="pixels of the image (default: the model config's image_area; 518400 for an -hf folder)")
    parser.add_argument("--height", type=int,
                        help="with --width: the image area is height*width (PaddleMIX's meaning); the aspect is "
                             "--ratio when given, else width:height")
    parser.add_argument("--width", type=int, help="see --height")
    parser.add_argument("--positive_prompt", default=POSITIVE_PROMPT, help="suffix appended to every prompt")
    parser.add_argument("--no_positive_prompt", action="store_true", help="do not append the positive suffix")
    parser.add_argument("--negative_prompt", default=NEGATIVE_PROMPT, help="negative prompt for guidance")
    parser.add_argument("--cfg_scale", type=float, default=3.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--top_k", type=int, default=2048, help="sample from the k most likely tokens")
    parser.add_argument("--top_p", type=float, help="sample from the smallest set with this probability mass")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument("--max_new_tokens", type=int, help="new-token budget (default: exactly the image grid)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="LM compute dtype (auto: bfloat16 on a GPU, float32 on CPU, where bf16/fp16 cannot run)")
    parser.add_argument("--vq_dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="vision tokenizer dtype (float32 as the original; bf16 changes the decoded pixels)")
    parser.add_argument("--quant_type", default=None, choices=["weight_only_int8"],
                        help="int8 LM weights, one scale per output channel (CPU and GPU)")
    parser.add_argument("--output_dir", default="outputs", help="where the PNGs go")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: every CPU, shared among the processes of a launch)")
    parser.add_argument("--parallel", choices=["tensor", "data"], help=PARALLEL_HELP)
    args = parser.parse_args(argv)
    if args.demo:
        for sub in ("llm", "vision_tokenizer", "tokenizer"):
            if not os.path.isdir(os.path.join(args.demo, sub)):
                parser.error(f"--demo {args.demo} has no {sub}/ folder")
        args.model_path = os.path.join(args.demo, "llm")
        args.vq_model_path = os.path.join(args.demo, "vision_tokenizer")
        args.tokenizer_path = os.path.join(args.demo, "tokenizer")
    if args.prompts_file:
        if args.prompt or (args.ratio and len(args.ratio) > 1):
            parser.error("--prompts_file replaces --prompt (and takes at most one --ratio, for lines without one)")
        try:
            entries = read_prompts_file(args.prompts_file)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        args.prompt = [prompt for prompt, _ in entries]
        args.ratio = [ratio or (args.ratio or ["1:1"])[0] for _, ratio in entries]
    elif not args.prompt:
        parser.error("give --prompt (repeatable) or --prompts_file")
    if any(not p.strip() for p in args.prompt):
        parser.error("--prompt must not be empty")
    if (args.height is None) != (args.width is None):
        parser.error("give --height and --width together")
    if args.height is not None:
        if args.height <= 0 or args.width <= 0:
            parser.error("--height and --width must be positive")
        if args.image_area:
            parser.error("--height/--width set the image area (height*width): give them or --image_area, not both")
        args.ratio = args.ratio or [f"{args.width}:{args.height}"]
        args.image_area = args.height * args.width
    args.ratio = args.ratio or ["1:1"]
    if len(args.ratio) not in (1, len(args.prompt)):
        parser.error(f"got {len(args.ratio)} --ratio for {len(args.prompt)} --prompt: give one, or one per prompt")
    if args.image_area is not None and args.image_area <= 0:
        parser.error("--image_area must be positive")
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        parser.error("--max_new_tokens must be positive")
    if args.top_k < 0:
        parser.error("--top_k must be >= 0 (0: no top-k)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    launch = Launch(args.parallel)
    set_cpu_threads(args.threads)
    model = Emu3ForCausalLM.from_pretrained(args.model_path, dtype=args.dtype, quant_type=args.quant_type,
                                            tensor_parallel_degree=launch.tensor_parallel_degree)
    processor = Emu3Processor.from_pretrained(args.model_path, args.vq_model_path, args.tokenizer_path,
                                             image_area=model.config.image_area, dtype=args.vq_dtype)

    suffix = "" if args.no_positive_prompt else args.positive_prompt
    mine = launch.mine(len(args.prompt))  # this process's prompts (data parallel), else all
    if not len(mine):  # an idle rank of a data-parallel launch with fewer prompts than processes
        launch.gather([])
        return 0
    texts = [args.prompt[i] + suffix for i in mine]
    ratio = [args.ratio[i] for i in mine] if len(args.ratio) > 1 else args.ratio[0]
    kwargs = dict(mode="G", ratio=ratio, image_area=args.image_area, return_tensors="pd")
    inputs = processor(texts, **kwargs)
    negative = None
    if args.cfg_scale != 1.0 and args.negative_prompt:
        negative = processor([args.negative_prompt] * len(texts), **kwargs)

    outputs = model.generate(
        inputs.input_ids,
        attention_mask=inputs.attention_mask,
        negative_prompt_ids=negative.input_ids if negative is not None else None,
        guidance_scale=args.cfg_scale,
        image_size=inputs.image_size,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=None if args.seed is None else [request_seed(args.seed, i) for i in mine],
        progress=True,
    ).numpy()
    os.makedirs(args.output_dir, exist_ok=True)
    lines = []
    for row in launch.split(range(len(mine))):  # the VQ decode and the writing, shared out over the ranks
        i = mine[row]
        pieces = processor.decode(outputs[row])
        images = [p for p in (pieces if isinstance(pieces, list) else [pieces]) if not isinstance(p, str)]
        if not images:
            lines.append((i, f"prompt {i}: no image was generated", True))
            continue
        path = os.path.join(args.output_dir, f"emu3_t2i_{i:02d}.png")
        images[0].save(path)
        lines.append((i, f"prompt {i} ({args.prompt[i]!r}): wrote {path}", False))
    for _, line, failed in sorted(launch.gather(lines)):
        print(line, file=sys.stderr if failed else sys.stdout)
    return 0


if __name__ == "__main__":
    run(main)
