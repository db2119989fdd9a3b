"""Serve Emu3 over HTTP: an OpenAI-compatible API and a web page (FastAPI + uvicorn).

Examples:
  python paddlemix/examples/emu3/serve.py --gen_model_path BAAI/Emu3-Gen --chat_model_path BAAI/Emu3-Chat \\
      --vq_model_path BAAI/Emu3-VisionTokenizer --host 127.0.0.1 --port 8000
  # the small checkpoints of the fixtures (a folder with llm/, vision_tokenizer/ and tokenizer/): the one LM serves
  # both endpoints
  python paddlemix/examples/emu3/serve.py --demo ../shared/fixtures/public --port 8000

Endpoints: POST /v1/images/generations, POST /v1/chat/completions (stream: true for server-sent events),
GET /v1/models, GET /health (queue and batch counters); the page at /. Concurrent requests of one model are
merged into one batched generate of up to --max_batch_size rows. Ctrl-C stops accepting requests, lets running
ones finish for --graceful_timeout seconds, then cancels what is left.
"""

import argparse
import logging
import os
import sys

from paddlemix import set_cpu_threads
from paddlemix.cli import run

# the server's extra: a clear message instead of a traceback when it is not installed
try:
    import uvicorn
except ImportError:  # pragma: no cover - depends on the environment
    uvicorn = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen_model_path", help="Emu3 generation model folder or hub id (serves images)")
    parser.add_argument("--chat_model_path", help="Emu3 chat model folder or hub id (serves chat)")
    parser.add_argument("--vq_model_path",
                        help="vision tokenizer folder or hub id (default: the model folder for an -hf checkpoint, "
                             "else BAAI/Emu3-VisionTokenizer)")
    parser.add_argument("--tokenizer_path", help="folder with emu3.tiktoken (default: a model path)")
    parser.add_argument("--demo", metavar="DIR",
                        help="a folder with llm/, vision_tokenizer/ and tokenizer/ (the fixtures' layout): its LM "
                             "serves both endpoints")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--max_batch_size", type=int, default=8, help="most images/answers in one batched generate")
    parser.add_argument("--batch_wait", type=float, default=0.05,
                        help="an idle server collects requests until none arrived for this many seconds (at most "
                             "20 times as long), so that requests sent together share one batch")
    parser.add_argument("--max_queue", type=int, default=64, help="most waiting requests (more get 429)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take (then 504)")
    parser.add_argument("--max_image_area", type=int,
                        help="most pixels of a generated image (default: the generation model's image_area)")
    parser.add_argument("--max_tokens", type=int, default=1024, help="most answer tokens of a chat request")
    parser.add_argument("--max_image_pixels", type=int, default=4096 * 4096,
                        help="most pixels of an uploaded image (larger ones get 400)")
    parser.add_argument("--graceful_timeout", type=float, default=30.0,
                        help="seconds running requests get to finish after Ctrl-C")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="LM compute dtype (auto: bfloat16 on a GPU, float32 on CPU, where bf16/fp16 cannot run)")
    parser.add_argument("--vq_dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="vision tokenizer dtype (float32 as the original; bf16 changes the decoded pixels)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every CPU); Paddle alone uses one")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.demo:
        for sub in ("llm", "vision_tokenizer", "tokenizer"):
            if not os.path.isdir(os.path.join(args.demo, sub)):
                parser.error(f"--demo {args.demo} has no {sub}/ folder")
        args.gen_model_path = args.chat_model_path = os.path.join(args.demo, "llm")
        args.vq_model_path = os.path.join(args.demo, "vision_tokenizer")
        args.tokenizer_path = os.path.join(args.demo, "tokenizer")
    if not args.gen_model_path and not args.chat_model_path:
        parser.error("give --gen_model_path, --chat_model_path (or both), or --demo")
    if not 0 < args.port < 65536:
        parser.error("--port must be in 1..65535")
    for name in ("max_batch_size", "max_queue", "max_tokens", "threads", "max_image_area", "max_image_pixels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive")
    if args.timeout <= 0 or args.graceful_timeout < 0 or args.batch_wait < 0:
        parser.error("--timeout must be positive, --graceful_timeout and --batch_wait non-negative")
    return args


def build_engine(args):
    """Load the models once (the two paths may be the same folder: then one model serves both endpoints)."""
    from paddlemix.models.emu3 import Emu3Processor, Emu3Tokenizer, Emu3VisionVQImageProcessor, Emu3VisionVQModel
    from paddlemix.models.emu3.hf_layout import resolve_model_paths
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
    from paddlemix.serving import Emu3Engine

    vq_model_path, tokenizer_path = resolve_model_paths(args.gen_model_path or args.chat_model_path,
                                                        args.vq_model_path, args.tokenizer_path)
    tokenizer = Emu3Tokenizer.from_pretrained(tokenizer_path, padding_side="left")
    image_processor = Emu3VisionVQImageProcessor.from_pretrained(vq_model_path)
    vision_tokenizer = Emu3VisionVQModel.from_pretrained(vq_model_path, dtype=args.vq_dtype)
    gen = Emu3ForCausalLM.from_pretrained(args.gen_model_path, dtype=args.dtype) if args.gen_model_path else None
    if args.chat_model_path and args.chat_model_path == args.gen_model_path:
        chat = gen
    else:
        chat = Emu3ForCausalLM.from_pretrained(args.chat_model_path, dtype=args.dtype) if args.chat_model_path else None
    area = (gen or chat).config.image_area
    processor = Emu3Processor(image_processor, vision_tokenizer, tokenizer, image_area=area)
    return Emu3Engine(processor, gen_model=gen, chat_model=chat, max_image_area=args.max_image_area,
                      max_tokens=args.max_tokens, max_image_pixels=args.max_image_pixels)


def main(argv=None):
    args = parse_args(argv)
    if uvicorn is None:
        sys.exit("error: serving needs FastAPI and uvicorn: pip install 'paddlemix[serve]'")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_cpu_threads(args.threads)
    from paddlemix.serving import build_app

    engine = build_engine(args)
    app = build_app(engine, max_batch_size=args.max_batch_size, max_queue=args.max_queue, timeout=args.timeout,
                    batch_wait=args.batch_wait)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.graceful_timeout)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown
        logging.getLogger(__name__).info("stopped")
    return 0


if __name__ == "__main__":
    run(main)
