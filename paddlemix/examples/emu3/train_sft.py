"""Fine-tune Emu3 (SFT) on data prepared by prepare_data.py: the original emu3/train/train.py, with its flag names.

Examples:
  # one process (the original's scripts/t2i_sft.sh with the launcher swapped)
  python paddlemix/examples/emu3/train_sft.py --model_name_or_path BAAI/Emu3-Stage1 \\
      --data_path OUT/list/train.json --output_dir runs/t2i --null_prompt_prob 0.05 \\
      --apply_loss_on_only_vision True --per_device_train_batch_size 1 --gradient_accumulation_steps 8 \\
      --learning_rate 1e-5 --min_learning_rate 1e-6 --lr_scheduler_type cosine_with_min_lr --warmup_steps 30
  # data parallel over 2 processes (gloo on CPU, NCCL on GPUs)
  python -m paddle.distributed.launch --nproc_per_node 2 paddlemix/examples/emu3/train_sft.py ...
  # 8 GPUs with the optimizer state, gradients and parameters sharded (the original's --deepspeed zero3.json)
  python -m paddle.distributed.launch --gpus 0,1,2,3,4,5,6,7 paddlemix/examples/emu3/train_sft.py \\
      --sharding stage3 --bf16 True --gradient_checkpointing True ...

--task t2i trains text-to-image (loss on the visual tokens with --apply_loss_on_only_vision True), vqa trains
answers to questions about an image (loss on answer + eos), text trains on text only. Checkpoints go to
OUTPUT_DIR/checkpoint-<step>/ every --save_steps steps; starting again with the same --output_dir resumes from the
newest complete one; the fine-tuned model (and the tokenizer) go to OUTPUT_DIR. Booleans are written True/False as
in the original. Flags of the original's Trainer that have no meaning here are accepted and logged.
"""

import argparse
import json
import logging
import os

import paddle
import paddle.distributed as dist

from paddlemix import set_cpu_threads
from paddlemix.cli import run
from paddlemix.models.emu3.configuration_emu3 import Emu3Config
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.models.emu3.tokenization_emu3 import Emu3Tokenizer
from paddlemix.trainer.datasets import DATASETS
from paddlemix.trainer.optimization import SCHEDULES
from paddlemix.trainer.trainer import SHARDING_LEVELS, TrainingConfig, train

logger = logging.getLogger("train_sft")


def str2bool(value):
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model_name_or_path", default="BAAI/Emu3-Gen", help="Emu3 model folder or hub id to fine-tune")
    a("--tokenizer_path", help="folder with emu3.tiktoken (default: --model_name_or_path)")
    a("--data_path", required=True, help="the list file prepare_data.py wrote (OUT/list/train.json)")
    a("--output_dir", required=True, help="checkpoints and the fine-tuned model")
    a("--task", choices=sorted(DATASETS), default="t2i", help="text-to-image, VQA or text-only samples")
    a("--null_prompt_prob", type=float, default=0.05, help="t2i: probability of dropping the prompt")
    a("--apply_loss_on_only_vision", type=str2bool, default=True, help="t2i: loss on the visual tokens only")
    a("--apply_loss_on_only_text", type=str2bool, default=False, help="accepted; unused, as in the original")
    a("--codebook_size", type=int, help="visual tokens (default: every visual token of the tokenizer)")
    a("--image_area", type=int, help="written into the model config (default: the config's)")
    a("--max_position_embeddings", type=int,
      help="the longest sample in tokens; samples are padded to it (default: the model config's)")
    a("--num_train_epochs", type=float, default=3.0)
    a("--max_steps", type=int, default=-1, help="optimizer steps (overrides --num_train_epochs when > 0)")
    a("--per_device_train_batch_size", type=int, default=1)
    a("--gradient_accumulation_steps", type=int, default=1)
    a("--learning_rate", type=float, default=1e-5)
    a("--min_learning_rate", type=float, default=1e-6, help="floor of cosine_with_min_lr")
    a("--lr_scheduler_type", choices=SCHEDULES, default="cosine_with_min_lr")
    a("--warmup_steps", type=int, default=30)
    a("--weight_decay", type=float, default=0.1)
    a("--max_grad_norm", type=float, default=5.0, help="clip by global norm (0: off)")
    a("--adam_beta1", type=float, default=0.9)
    a("--adam_beta2", type=float, default=0.95)
    a("--adam_epsilon", type=float, default=1e-6)
    a("--gradient_checkpointing", type=str2bool, default=False, help="recompute each decoder layer in backward")
    a("--bf16", type=str2bool, default=False, help="bf16 autocast with float32 master weights (GPU only)")
    a("--save_steps", type=int, default=500, help="checkpoint every N steps (0: none)")
    a("--save_total_limit", type=int, help="keep at most N checkpoints")
    a("--logging_steps", type=int, default=1)
    a("--seed", type=int, default=42)
    a("--sharding", choices=sorted(SHARDING_LEVELS), help="group-sharded data parallelism on GPUs")
    a("--sample_order", metavar="FILE",
      help="JSON list of epochs, each the dataset indices in training order (replaces the seeded shuffle)")
    a("--threads", type=int, help="CPU threads per process (default: this process's share of the CPUs)")
    # the original Trainer's flags that t2i_sft.sh passes: mapped or ignored, one log line each
    a("--deepspeed", metavar="JSON", help="a DeepSpeed config: its ZeRO stage maps to --sharding")
    a("--tf32", type=str2bool)
    a("--eval_strategy")
    a("--save_strategy", choices=["no", "steps", "epoch"])
    a("--dataloader_num_workers", type=int)
    a("--report_to", nargs="+")
    a("--run_name")
    a("--attn_type")
    a("--use_cpu", type=str2bool)
    a("--disable_tqdm", type=str2bool, default=False)
    args = p.parse_args(argv)
    if args.max_position_embeddings is not None and args.max_position_embeddings < 2:
        p.error("--max_position_embeddings must be at least 2")
    if not 0.0 <= args.null_prompt_prob <= 1.0:
        p.error("--null_prompt_prob must be in [0, 1]")
    return args


def map_trainer_flags(args):
    """Apply or drop the original Trainer's flags that have no direct counterpart, one log line each."""
    if args.deepspeed:
        try:
            with open(args.deepspeed, encoding="utf-8") as f:
                stage = json.load(f).get("zero_optimization", {}).get("stage", 3)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--deepspeed {args.deepspeed}: cannot read it as JSON ({e})") from None
        if args.sharding is None and stage in (1, 2, 3):
            args.sharding = f"stage{stage}"
        logger.info("--deepspeed %s (ZeRO stage %s): Paddle's group-sharded training --sharding %s", args.deepspeed,
                    stage, args.sharding)
    if args.apply_loss_on_only_text:
        logger.info("--apply_loss_on_only_text is accepted and, as in the original, unused")
    if args.tf32 is not None:
        logger.info("--tf32 ignored: Paddle picks TF32 matmuls on its own on Ampere+ GPUs")
    if args.eval_strategy not in (None, "no"):
        logger.info("--eval_strategy %s ignored: there is no evaluation set", args.eval_strategy)
    if args.save_strategy == "no":
        args.save_steps = 0
        logger.info("--save_strategy no: no checkpoints")
    elif args.save_strategy is not None:
        logger.info("--save_strategy %s: checkpoints every --save_steps %d steps", args.save_strategy, args.save_steps)
    if args.dataloader_num_workers:
        logger.info("--dataloader_num_workers ignored: samples are formatted in the training process")
    if args.report_to and args.report_to != ["none"]:
        logger.info("--report_to %s ignored: losses go to the log and OUTPUT_DIR/trainer_state.json",
                    " ".join(args.report_to))
    if args.run_name:
        logger.info("--run_name %s ignored", args.run_name)
    if args.attn_type is not None:
        logger.info("--attn_type %s ignored: attention_backend() picks the kernel (flash attention on GPU in bf16)",
                    args.attn_type)
    if args.use_cpu:
        paddle.set_device("cpu")
        logger.info("--use_cpu True: training on the CPU")


def read_sample_order(path):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--sample_order file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv=None):
    args = parse_args(argv)
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    map_trainer_flags(args)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    set_cpu_threads(args.threads or max(1, cpus // world))
    if world > 1:
        dist.init_parallel_env()

    # the original's update_configs: a flag given overrides the model config, else the config fills the flag
    config = Emu3Config.from_pretrained(args.model_name_or_path)
    for name in ("image_area", "max_position_embeddings"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(config, name))
        else:
            setattr(config, name, getattr(args, name))
    tokenizer = Emu3Tokenizer.from_pretrained(args.tokenizer_path or args.model_name_or_path, padding_side="right")
    kwargs = {"codebook_size": args.codebook_size}
    if args.task == "t2i":
        kwargs.update(null_prompt_prob=args.null_prompt_prob, apply_loss_on_only_vision=args.apply_loss_on_only_vision)
    dataset = DATASETS[args.task](args.data_path, tokenizer, args.max_position_embeddings, **kwargs)
    training = TrainingConfig(
        output_dir=args.output_dir,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        min_learning_rate=args.min_learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        seed=args.seed,
        sharding=args.sharding,
        sample_order=read_sample_order(args.sample_order),
        disable_tqdm=args.disable_tqdm,
    )
    training.validate()  # before the model is loaded: --bf16 on a CPU, --sharding on a CPU, ...
    if training.sharding and world == 1:
        raise ValueError("--sharding needs several processes: start with python -m paddle.distributed.launch")
    # data parallel: every rank holds the whole model (tensor parallelism would otherwise follow the launch's world)
    model = Emu3ForCausalLM.from_pretrained(args.model_name_or_path, config=config, dtype="float32",
                                            tensor_parallel_degree=1)
    history = train(model, dataset, training)
    if rank == 0:
        tokenizer.save_pretrained(args.output_dir)
        last = history[-1] if history else None
        if last:
            print(f"trained {last['step']} steps, last loss {last['loss']:.6f}; model saved to {args.output_dir}")
    return 0


if __name__ == "__main__":
    run(main)
