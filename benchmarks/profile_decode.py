"""Where our LM decode step spends its time (the evidence behind the decode-step row of RESULTS.md).

    python benchmarks/profile_decode.py [--threads 2] [--steps 32] [--ops 15]

Uses the lm config and weights of run.py's full run (made if missing). Prints, per decode step at batch 1:
1. the weight-read floor: bytes of all weights but the embedding table / memory bandwidth (numpy copy);
2. the matmuls alone: every projection of the model as a paddle matmul [1, in] x [in, out] on the model's own
   weights, nothing else (what the step would cost with zero overhead around the matmuls);
3. the model's forward step (public ``forward`` with the KV cache), and ``generate``'s step (forward + cfg_sample +
   bookkeeping), measured as in run.py;
4. Paddle's profiler: the operators of the forward steps, the time spent in them and how many run per step.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    parser.add_argument("--ops", type=int, default=15, help="operators listed from the profile")
    args = parser.parse_args()
    import common

    common.set_thread_env(args.threads)
    import numpy as np
    import paddle

    import run as bench

    paddle.base.core.set_num_threads(args.threads)
    runner_args = argparse.Namespace(threads=args.threads, reference=False)
    runner = bench.Runner(runner_args, bench.FULL)
    orig_dir, _ = runner.weights("lm", "lm")
    if orig_dir is None:
        sys.exit("could not make the lm weights (see benchmarks/.work/logs)")
    from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM, Emu3KVCache

    model = Emu3ForCausalLM.from_pretrained(orig_dir)
    config = model.config
    path = os.path.join(orig_dir, "model.safetensors")
    step_bytes = bench.weight_bytes(path, exclude=("model.embed_tokens.weight",))

    bandwidth = common.copy_bandwidth(256 * 1024**2, 5)
    print(f"weights read per step: {step_bytes / 1e6:.1f} MB; bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"floor {step_bytes / bandwidth * 1e3:.2f} ms/step")

    weights = [layer.weight for _, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)]
    x = {w.shape[0]: paddle.randn([1, w.shape[0]]) for w in weights}

    def matmuls():
        for w in weights:
            paddle.matmul(x[w.shape[0]], w)
        paddle.device.synchronize() if paddle.is_compiled_with_cuda() else None
        return weights[-1]

    matmuls()
    t_mm = min(_time(matmuls) for _ in range(args.steps))
    print(f"matmuls alone ({len(weights)} projections incl. lm_head): {t_mm * 1e3:.2f} ms/step")

    prompt = paddle.to_tensor(np.random.default_rng(0).integers(0, 1000, (1, 128)), dtype="int64")

    def forward_steps(n, profile=None):
        cache = Emu3KVCache.for_model(config, 1, 128 + n + 1, model.dtype)
        with paddle.no_grad():
            logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
            if profile is not None:
                profile.start()
            times = []
            for _ in range(n):
                token = paddle.argmax(logits, axis=-1).unsqueeze(1)
                t0 = time.perf_counter()
                logits = model(token, past_key_values=cache, use_cache=True).logits[:, -1]
                logits.numpy()
                times.append(time.perf_counter() - t0)
            if profile is not None:
                profile.stop()
        return float(np.median(times))

    forward_steps(4)
    t_fwd = forward_steps(args.steps)
    print(f"model forward step (forward with KV cache): {t_fwd * 1e3:.2f} ms/step "
          f"({t_fwd / (step_bytes / bandwidth):.2f}x the floor, {t_fwd / t_mm:.2f}x the matmuls alone)")

    def gen(n):
        return model.generate(prompt, max_new_tokens=n, do_sample=False, progress=False)

    gen(2)
    t1 = min(_time(lambda: gen(1)) for _ in range(3))
    tn = min(_time(lambda: gen(args.steps + 1)) for _ in range(3))
    t_gen = (tn - t1) / args.steps
    print(f"generate step (forward + cfg_sample + bookkeeping): {t_gen * 1e3:.2f} ms/step "
          f"({t_gen / (step_bytes / bandwidth):.2f}x the floor)")

    import paddle.profiler as profiler

    steps = 8
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)
    forward_steps(steps, prof)
    _op_table(prof, steps, args.ops)


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _op_table(prof, steps, top):
    """Per-step operator totals from the profiler's host statistics, largest first."""
    from paddle.profiler.profiler_statistic import StatisticData, SortedKeys  # noqa: F401

    stats = StatisticData(prof.profiler_result.get_data(), prof.profiler_result.get_extra_info())
    items = stats.event_summary.items  # operator name -> summary
    rows = sorted(items.items(), key=lambda kv: kv[1].cpu_time, reverse=True)
    total = sum(v.cpu_time for _, v in rows)
    calls = sum(v.call for _, v in rows)
    print(f"profiled operators: {calls / steps:.0f} op calls per step, {total / 1e6 / steps:.2f} ms of op time per "
          f"step (host clock, includes dispatch)")
    print(f"{'operator':<32}{'calls/step':>12}{'ms/step':>10}{'us/call':>10}")
    for name, v in rows[:top]:
        print(f"{name:<32}{v.call / steps:>12.1f}{v.cpu_time / 1e6 / steps:>10.3f}{v.cpu_time / 1e3 / max(v.call, 1):>10.1f}")


if __name__ == "__main__":
    main()
