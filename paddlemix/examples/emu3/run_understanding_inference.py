"""Answer questions about images with Emu3 (visual question answering, the original's multimodal_understanding.py).

Examples:
  python paddlemix/examples/emu3/run_understanding_inference.py --model_path BAAI/Emu3-Chat \\
      --vq_model_path BAAI/Emu3-VisionTokenizer --image_path demo_images/emu3_demo.png \\
      --question "Please describe the image"
  # transformers' -hf folder (BAAI/Emu3-Chat-hf): --model_path alone (vision tokenizer and tokenizer from it too)
  python paddlemix/examples/emu3/run_understanding_inference.py --model_path BAAI/Emu3-Chat-hf \\
      --image_path demo_images/emu3_demo.png --question "Please describe the image"
  # a batch: repeat --image_path and --question (one image for all questions, or one question for all images)
  python paddlemix/examples/emu3/run_understanding_inference.py --model_path DIR --vq_model_path VQ_DIR \\
      --image_path a.png --question "What is this?" --image_path b.png --question "What color is it?"

The prompt is the original's: "<bos>You are a helpful assistant. USER: <image tokens><question>. ASSISTANT:".
Decoding is greedy unless --do_sample is given. Each answer is printed as "Answer <i>: <text>".
"""

import argparse
import os
import sys

from PIL import Image

from paddlemix import set_cpu_threads
from paddlemix.models.emu3 import Emu3Processor, Emu3Tokenizer, Emu3VisionVQImageProcessor, Emu3VisionVQModel
from paddlemix.models.emu3.hf_layout import resolve_model_paths
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM


def pair_up(images, questions):
    """One (image, question) per row: equal counts, or one image / one question shared by the whole batch."""
    if len(images) == len(questions):
        return images, questions
    if len(images) == 1:
        return images * len(questions), questions
    if len(questions) == 1:
        return images, questions * len(images)
    raise ValueError(
        f"got {len(images)} --image_path and {len(questions)} --question: give one question per image, "
        "or one image (or one question) for the whole batch"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="BAAI/Emu3-Chat", help="Emu3 chat model folder or hub id")
    parser.add_argument("--vq_model_path", help="vision tokenizer folder or hub id (default: --model_path for a "
                        "transformers -hf folder, else BAAI/Emu3-VisionTokenizer)")
    parser.add_argument("--tokenizer_path", help="folder with emu3.tiktoken or tokenizer.json (default: --model_path)")
    parser.add_argument("--image_path", action="append", required=True, help="an image file (repeatable)")
    parser.add_argument("--question", action="append", required=True, help="a question (repeatable)")
    parser.add_argument("--max_new_tokens", type=int, default=1024, help="longest answer in tokens")
    parser.add_argument(
        "--padding_image",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encode images of different sizes as one zero-padded batch, as the original example (default: on)",
    )
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--top_k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top_p", type=float, help="sample from the smallest set with this probability mass")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, help="makes sampling reproducible")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
        help="compute dtype (bf16/fp16 need a GPU; on CPU float32 is used)",
    )
    parser.add_argument("--quant_type", default=None, choices=["weight_only_int8"],
                        help="int8 LM weights, one scale per output channel (CPU and GPU)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every CPU); Paddle alone uses one")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    if args.max_new_tokens <= 0:
        parser.error("--max_new_tokens must be positive")
    for path in args.image_path:
        if not os.path.isfile(path):
            parser.error(f"--image_path {path} is not a file")
    if any(not q.strip() for q in args.question):
        parser.error("--question must not be empty")
    try:
        args.image_path, args.question = pair_up(args.image_path, args.question)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    set_cpu_threads(args.threads)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # answers of untrained or cut-short models may hold U+FFFD

    vq_model_path, tokenizer_path = resolve_model_paths(args.model_path, args.vq_model_path, args.tokenizer_path)
    tokenizer = Emu3Tokenizer.from_pretrained(tokenizer_path, padding_side="left")
    image_processor = Emu3VisionVQImageProcessor.from_pretrained(vq_model_path)
    vision_tokenizer = Emu3VisionVQModel.from_pretrained(vq_model_path, dtype=args.dtype)
    model = Emu3ForCausalLM.from_pretrained(args.model_path, dtype=args.dtype, quant_type=args.quant_type)
    processor = Emu3Processor(image_processor, vision_tokenizer, tokenizer, image_area=model.config.image_area)

    images = [Image.open(path) for path in args.image_path]
    inputs = processor(args.question, images, mode="U", padding_image=args.padding_image, return_tensors="pd")
    for i, (path, question) in enumerate(zip(args.image_path, args.question)):
        print(f"Question {i} ({path}): {question}")
    outputs = model.generate(
        inputs.input_ids,
        attention_mask=inputs.attention_mask,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        seed=args.seed,
        progress=True,
    )
    answers = processor.batch_decode(outputs[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    for i, answer in enumerate(answers):
        print(f"Answer {i}: {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
