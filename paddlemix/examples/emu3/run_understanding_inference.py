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
  # several images in one question: one <image> placeholder per --image_path, in order
  ... --image_path a.png --image_path b.png --question "What differs between <image> and <image>?"
  # a text-only question (no --image_path), printed as it is decoded
  ... --question "What is a tokenizer?" --stream
  # an interactive chat about an image: one question per line on stdin, until EOF (or /exit); /reset starts over
  ... --image_path a.png --chat --stream

The prompt is the original's: "<bos>You are a helpful assistant. USER: <image tokens><question>. ASSISTANT:"
(--system_prompt replaces the first sentence; later chat turns follow as " USER: <question>. ASSISTANT:" after
the answer); --stage1 gives Emu3-Stage1's "<bos><image tokens><question>" instead. Decoding is greedy unless
--do_sample is given. Each answer is printed as "Answer <i>: <text>" ("Assistant: <text>" in --chat).
Under ``python -m paddle.distributed.launch --nproc_per_node N`` the model is split over the processes
(--parallel tensor, the default) or the questions are shared out (--parallel data); rank 0 prints (--chat runs
in one process).
"""

import argparse
import itertools
import os
import sys

from PIL import Image, UnidentifiedImageError

from paddlemix import set_cpu_threads
from paddlemix.cli import run
from paddlemix.distributed import PARALLEL_HELP, Launch, is_main, request_seed
from paddlemix.models.emu3 import ChatSession, Emu3Processor, TextStreamer
from paddlemix.models.emu3.chat_template import DEFAULT_SYSTEM_PROMPT, IMAGE_PLACEHOLDER
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.models.emu3.processing_emu3 import STAGE1_CHAT_TEMPLATE


def pair_up(images, questions):
    """The images of each question: with <image> placeholders, the images in order, one per placeholder;
    otherwise one image per question (equal counts, or one image / one question shared by the whole batch), or
    none at all (text-only questions)."""
    if any(IMAGE_PLACEHOLDER in q for q in questions):
        counts = [q.count(IMAGE_PLACEHOLDER) for q in questions]
        if sum(counts) != len(images):
            raise ValueError(
                f"the questions hold {sum(counts)} {IMAGE_PLACEHOLDER} placeholders but {len(images)} --image_path "
                "were given: give one image per placeholder"
            )
        starts = list(itertools.accumulate([0] + counts))
        return [images[a:b] for a, b in zip(starts, starts[1:])], questions
    if not images:
        return [[] for _ in questions], questions
    if len(images) == len(questions):
        return [[im] for im in images], questions
        return images, questions
    if len(images) == 1:
        return [images] * len(questions), questions
    if len(questions) == 1:
        return [[im] for im in images], questions * len(images)
    raise ValueError(
        f"got {len(images)} --image_path and {len(questions)} --question: give one question per image, "
        "or one image (or one question) for the whole batch"
    )


def open_image(path):
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", default="BAAI/Emu3-Chat", help="Emu3 chat model folder or hub id")
    parser.add_argument("--vq_model_path", help="vision tokenizer folder or hub id (default: --model_path for a "
                        "transformers -hf folder, else BAAI/Emu3-VisionTokenizer)")
    parser.add_argument("--tokenizer_path", help="folder with emu3.tiktoken or tokenizer.json (default: --model_path)")
    parser.add_argument("--image_path", action="append", default=[], help="an image file (repeatable; none: text only)")
    parser.add_argument(
        "--question", action="append", default=[],
        help="a question (repeatable); <image> places the next image (with --chat: the first turn)",
    )
    parser.add_argument(
        "--system_prompt", default=DEFAULT_SYSTEM_PROMPT, help=f"system prompt (default: {DEFAULT_SYSTEM_PROMPT!r})"
    )
    parser.add_argument(
        "--stage1", action="store_true",
        help="Emu3-Stage1 prompt format: image tokens then the text, no chat template (for BAAI/Emu3-Stage1)",
    )
    parser.add_argument("--stream", action="store_true", help="print the answer as it is decoded (one question)")
    parser.add_argument(
        "--chat", action="store_true",
        help="interactive chat: questions from stdin, one per line, keeping the history and its KV cache; the "
        "images go to the first turn",
    )
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
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="LM compute dtype (auto: bfloat16 on a GPU, float32 on CPU, where bf16/fp16 cannot run)",
    )
    parser.add_argument(
        "--vq_dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="vision tokenizer dtype (float32 as the original; bf16 changes the image codes)",
    )
    parser.add_argument("--quant_type", default=None, choices=["weight_only_int8"],
                        help="int8 LM weights, one scale per output channel (CPU and GPU)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: every CPU, shared among the processes of a launch)")
    parser.add_argument("--parallel", choices=["tensor", "data"], help=PARALLEL_HELP)
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
    if args.stage1 and (args.chat or args.system_prompt != DEFAULT_SYSTEM_PROMPT):
        parser.error("--stage1 has no chat template: it takes neither --chat nor --system_prompt")
    if args.chat:
        if len(args.question) > 1:
            parser.error("--chat takes at most one --question (the first turn); the next ones come from stdin")
        return args
    if not args.question:
        parser.error("--question is required (except with --chat)")
    try:
        args.images, args.question = pair_up(args.image_path, args.question)
    except ValueError as e:
        parser.error(str(e))
    if args.stream and len(args.question) > 1:
        parser.error("--stream prints one answer as it is decoded: give one question")
    return args


def main(argv=None):
    args = parse_args(argv)
    launch = Launch(args.parallel)
    if args.chat and launch.size > 1:
        raise SystemExit("--chat reads stdin in one process: run it without paddle.distributed.launch")
    set_cpu_threads(args.threads)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # answers of untrained or cut-short models may hold U+FFFD

    model = Emu3ForCausalLM.from_pretrained(args.model_path, dtype=args.dtype, quant_type=args.quant_type,
                                            tensor_parallel_degree=launch.tensor_parallel_degree)
    processor = Emu3Processor.from_pretrained(args.model_path, args.vq_model_path, args.tokenizer_path,
                                             image_area=model.config.image_area, dtype=args.vq_dtype)

    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        progress=not args.stream,
    )
    if args.chat:
        return chat(args, model, processor, dict(sampling, seed=args.seed))

    for i, (row, question) in enumerate(zip(args.images, args.question) if is_main() else []):
        print(f"Question {i} ({', '.join(row) or 'no image'}): {question}")
    mine = launch.mine(len(args.question), "questions")  # this process's questions (data parallel), else all
    if not len(mine):  # an idle rank of a data-parallel launch with fewer questions than processes
        launch.gather([])
        return 0
    inputs = build_inputs(args, processor, mine)
    streamer = None
    if args.stream:  # one question; every rank of a tensor-parallel launch steps alike, rank 0 prints
        if is_main():
            print("Answer 0: ", end="", flush=True)
        streamer = TextStreamer(processor.tokenizer, callback=None if is_main() else (lambda text: None))
    outputs = model.generate(inputs.input_ids, attention_mask=inputs.attention_mask, streamer=streamer,
                             seed=None if args.seed is None else [request_seed(args.seed, i) for i in mine], **sampling)
    answers = processor.batch_decode(outputs[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    gathered = launch.gather([(mine[row], answers[row]) for row in launch.split(range(len(mine)))])
    if not args.stream:
        for i, answer in sorted(gathered):
            print(f"Answer {i}: {answer}")
    return 0


def build_inputs(args, processor, rows):
    """The model inputs of the questions ``rows``: the chat format (or --stage1's), their images in place."""
    questions = [args.question[i] for i in rows]
    images = [[open_image(path) for path in args.images[i]] for i in rows]
    if args.stage1:
        flat = [im for row in images for im in row]  # one per question, or one per <image> placeholder
        return processor(questions, flat or None, mode="U", padding_image=args.padding_image,
                         chat_template=STAGE1_CHAT_TEMPLATE, return_tensors="pd")
    conversations = [
        [{"role": "user", "content": question if IMAGE_PLACEHOLDER in question
          else [{"type": "image"}] * len(row) + [{"type": "text", "text": question}]}]
        for question, row in zip(questions, images)
    ]
    return processor.apply_chat_template(
        conversations, tokenize=True, images=images, system_prompt=args.system_prompt,
        padding_image=args.padding_image, return_tensors="pd",
    )
    return 0


def chat(args, model, processor, sampling):
    """The --chat loop: the turns of --question and stdin (one per line) until EOF or /exit; /reset starts over."""
    session = ChatSession(model, processor, system_prompt=args.system_prompt, padding_image=args.padding_image)
    images = [open_image(path) for path in args.image_path]
    interactive = sys.stdin.isatty()
    for line in itertools.chain(args.question, iter(lambda: read_line(interactive), None)):
        question = line.strip()
        if question == "/exit":
            break
        if question == "/reset":
            session.reset()
            images = [open_image(path) for path in args.image_path]
            continue
        if not question:
            continue
        if IMAGE_PLACEHOLDER in question and question.count(IMAGE_PLACEHOLDER) != len(images):
            print(f"(this turn has {question.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} but {len(images)} "
                  "images are waiting: not asked)", flush=True)
            continue
        print("Assistant: ", end="", flush=True)
        streamer = TextStreamer(processor.tokenizer) if args.stream else None
        answer = session.ask(question, images, streamer=streamer, **sampling)
        images = []  # the images belong to the first turn; later turns read them from the cache
        if not args.stream:
            print(answer, flush=True)
    return 0


def read_line(interactive):
    """The next line of stdin (None at EOF), with a "User: " prompt on a terminal."""
    try:
        return input("User: " if interactive else "")
    except EOFError:
        return None


if __name__ == "__main__":
    run(main)
