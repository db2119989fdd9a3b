"""CPU time of each fused op: the compiled extension (paddlemix_ops) against its pure-Paddle fallback, same inputs,
same process, float32, at Emu3 shapes. Prints a markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_ops.py                 # needs the extension: cd external_ops && python setup.py install
    python benchmarks/bench_ops.py --no-append --repeats 3 --threads 2
"""

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import paddle

import paddlemix
import paddlemix.ops as ops
from paddlemix.ops import fallback

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_OPS = frozenset(
    {"rms_norm", "rotary_embedding", "vq_nearest", "cfg_sample", "conv2d", "linear", "group_norm", "decoder_step",
     "masked_softmax", "softmax_xent"}
)


def best_time(fn, repeats):
    """Fastest of `repeats` calls after a warm-up (the least disturbed by other jobs on the machine)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cases(rng):
    """(op, shape label, fallback call, extension call, equal(a, b) check)."""
    t = paddle.to_tensor
    out = []
    for shape in ((2, 1, 4096), (1, 1024, 4096)):
        x, w = t(rng.standard_normal(shape).astype("float32")), t(rng.standard_normal(shape[-1]).astype("float32"))
        out.append(("rms_norm", f"x {list(shape)}", lambda x=x, w=w: fallback.rms_norm(x, w, 1e-6),
                    lambda x=x, w=w: ops.rms_norm(x, w, 1e-6)))
    for b, l in ((2, 1), (1, 1024)):
        q = t(rng.standard_normal((b, l, 32, 128)).astype("float32"))
        k = t(rng.standard_normal((b, l, 8, 128)).astype("float32"))
        pos = t(np.tile(np.arange(4000, 4000 + l), (b, 1)).astype("int64"))
        f = t((1.0 / 1e6 ** (np.arange(0, 128, 2) / 128)).astype("float32"))
        out.append(("rotary_embedding", f"q [{b},{l},32,128] k [{b},{l},8,128]",
                    lambda q=q, k=k, p=pos, f=f: fallback.rotary_embedding(q, k, p, f),
                    lambda q=q, k=k, p=pos, f=f: ops.rotary_embedding(q, k, p, f)))
    z = t(rng.standard_normal((4096, 4)).astype("float32"))
    e = t(rng.standard_normal((32768, 4)).astype("float32"))
    out.append(("vq_nearest", "[4096, 4] x [32768, 4]", lambda: fallback.vq_nearest(z, e),
                lambda: ops.vq_nearest(z, e)))
    b, v = 2, 184622
    cond = t((rng.standard_normal((b, v)) * 3).astype("float32"))
    uncond = t((rng.standard_normal((b, v)) * 3).astype("float32"))
    allowed = t(np.array([[151854, 151854 + 32768]] * b, "int64"))
    uniforms = t(rng.random(b).astype("float32"))
    for label, top_k, top_p, temp, rnd in (
        ("greedy", 0, 1.0, 1.0, None),
        ("sample top-k 2048", 2048, 1.0, 1.0, uniforms),
        ("sample top-k 2048 top-p 0.9 T 0.8", 2048, 0.9, 0.8, uniforms),
    ):
        args = (cond, uncond, 3.0, allowed, top_k, top_p, temp, rnd)
        out.append(("cfg_sample", f"B={b} V={v} range 32768, {label}", lambda a=args: fallback.cfg_sample(*a),
                    lambda a=args: ops.cfg_sample(*a)))
    # the VQ model's convolutions at 256x256 (ch 64, ch_mult [1, 2, 2, 4]): (Cin, Cout, size, kernel, stride, padding)
    for cin, cout, size, k, stride, pad in (
        (3, 64, 256, 3, 1, (1, 1, 1, 1)),
        (64, 64, 256, 3, 1, (1, 1, 1, 1)),
        (64, 64, 256, 3, 2, (0, 1, 0, 1)),
        (128, 128, 128, 3, 1, (1, 1, 1, 1)),
        (64, 128, 128, 1, 1, (0, 0, 0, 0)),
        (256, 256, 32, 3, 1, (1, 1, 1, 1)),
        (4, 512, 32, 1, 1, (0, 0, 0, 0)),
    ):
        x = t(rng.standard_normal((1, cin, size, size)).astype("float32"))
        w = t((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype("float32"))
        bias = t(rng.standard_normal(cout).astype("float32"))
        label = f"{cin}->{cout} {k}x{k} s{stride} on {size}x{size}" + (" pad r/b" if pad == (0, 1, 0, 1) else "")
        out.append(("conv2d", label,
                    lambda x=x, w=w, b=bias, s=stride, p=pad: fallback.conv2d(x, w, b, (s, s), p),
                    lambda x=x, w=w, b=bias, s=stride, p=pad: ops.conv2d(x, w, b, s, p)))
    # the VQ decoder's upsampling conv: nearest 2x then 3x3 (the fallback materialises the upsampled map)
    for cin, size in ((128, 128), (64, 256)):
        x = t(rng.standard_normal((1, cin, size, size)).astype("float32"))
        w = t((rng.standard_normal((cin, cin, 3, 3)) / np.sqrt(cin * 9)).astype("float32"))
        bias = t(rng.standard_normal(cin).astype("float32"))
        out.append(("conv2d", f"upsample 2x + {cin}->{cin} 3x3 on {size}x{size}",
                    lambda x=x, w=w, b=bias: fallback.conv2d(x, w, b, (1, 1), (1, 1, 1, 1), 2),
                    lambda x=x, w=w, b=bias: ops.conv2d(x, w, b, 1, 1, upsample=2)))
    # GroupNorm + SiLU (encoder) and SpatialNorm + SiLU (decoder: modulation from the 32x32 latent) at 256x256
    for c, mod in ((64, None), (128, 32)):
        x = t(rng.standard_normal((1, c, 256, 256)).astype("float32"))
        gw, gb = t(np.ones(c, "float32")), t(np.zeros(c, "float32"))
        sc = sh = None
        if mod:
            sc, sh = (t(rng.standard_normal((1, c, mod, mod)).astype("float32")) for _ in range(2))
        label = f"[1, {c}, 256, 256] + SiLU" + (f", modulated from {mod}x{mod}" if mod else "")
        out.append(("group_norm", label,
                    lambda x=x, w=gw, b=gb, s=sc, h=sh: fallback.group_norm(x, w, b, 32, 1e-6, s, h, True),
                    lambda x=x, w=gw, b=gb, s=sc, h=sh: ops.group_norm(x, w, b, 32, 1e-6, s, h, True)))
    # lm_head of the benchmark LM config at one and two rows
    w = t((rng.standard_normal((512, 40000)) / np.sqrt(512)).astype("float32"))
    for rows in (1, 2):
        x = t(rng.standard_normal((rows, 512)).astype("float32"))
        out.append(("linear", f"[{rows}, 512] x [512, 40000]", lambda x=x: fallback.linear(x, w),
                    lambda x=x: ops.linear(x, w)))
    # the attention scores of one 256-query block of a 1024-token prefill (LM config: 8 heads in 2 groups of 4)
    from paddlemix.models.emu3.modeling_emu3 import additive_mask

    scores = t(rng.standard_normal((1, 2, 4 * 256, 1024)).astype("float32"))
    mask = additive_mask(paddle.ones([1, 1024], "int64"), 1024, 0, paddle.float32)[:, :, 768:1024].contiguous()
    out.append(("masked_softmax", "scores [1, 2, 1024, 1024] (both: + a copy, it works in place), mask [1, 1, 256, 1024]",
                lambda: fallback.masked_softmax_(scores.clone(), mask, 0.125),
                lambda: ops.masked_softmax_(scores.clone(), mask, 0.125)))
    # one 512-row chunk of the training loss over the LM config's 40000-token vocabulary (both: + a copy)
    logits = t(rng.standard_normal((512, 40000)).astype("float32") * 4)
    targets = t(rng.integers(0, 40000, 512).astype("int64"))
    out.append(("softmax_xent", "logits [512, 40000] (both: + a copy, it works in place)",
                lambda: _xent(fallback.softmax_xent_, logits, targets),
                lambda: _xent(ops.softmax_xent_, logits, targets)))
    # the backward of one RMSNorm over a 4 x 1024-token training batch of the LM config
    x, w, dy = (t(rng.standard_normal(s).astype("float32")) for s in ((4, 1024, 512), (512,), (4, 1024, 512)))
    from paddlemix.ops import autograd

    out.append(("rms_norm_grad", "x, dy [4, 1024, 512]", lambda: fallback.rms_norm_grad(x, w, dy, 1e-5),
                lambda: autograd.rms_norm_grad(x, w, dy, 1e-5)))
    out += _decoder_step_cases(rng)
    out += _stored_weight_cases(rng)
    return out


def _xent(fn, logits, targets):
    """(per-row loss, gradient) of softmax_xent_ run on a copy of logits."""
    grad = logits.clone()
    return fn(grad, targets), grad


def _stored(w, kind):
    """A float32 numpy weight [in, out] as ops.linear's stored arguments: bf16 (truncated bits) or int8 + scale."""
    if kind == "bf16":
        return (paddle.to_tensor((w.view(np.uint32) >> 16).astype(np.uint16)).view(paddle.bfloat16),)
    from paddlemix.models.quantization import quantize_rows

    q, s = quantize_rows(np.ascontiguousarray(w.T))
    return paddle.to_tensor(np.ascontiguousarray(q.T)), paddle.to_tensor(s)


def _stored_weight_cases(rng):
    """bf16 / int8 weights (quantization.py) at an Emu3-8B MLP projection [4096, 14336]: decode rows (the fallback
    widens blocks of columns before Paddle's matmul, the kernel widens in registers), and a 256-row prefill block,
    where both run the fallback: its column-block widening + MKL matmul against a plain float32 matmul (the cost of
    the widening)."""
    w = (rng.standard_normal((4096, 14336)) / 64).astype("float32")
    out = []
    for kind in ("bf16", "int8"):
        args = _stored(w, kind)
        for rows in (1, 2):
            x = paddle.to_tensor(rng.standard_normal((rows, 4096)).astype("float32"))
            out.append((f"linear {kind}", f"[{rows}, 4096] x [4096, 14336]",
                        lambda x=x, a=args: fallback.linear(x, *a), lambda x=x, a=args: ops.linear(x, *a)))
        x = paddle.to_tensor(rng.standard_normal((256, 4096)).astype("float32"))
        wf = paddle.to_tensor(w)
        out.append((f"linear {kind} prefill", "[256, 4096] x [4096, 14336]; fallback column = float32 matmul",
                    lambda x=x: paddle.matmul(x, wf), lambda x=x, a=args: ops.linear(x, *a)))
    return out


def _decoder_step_cases(rng):
    """One decoder layer of the benchmark LM config (hidden 512, 8 heads, 2 KV heads, intermediate 1376), one new
    token per row over a 1024-slot cache: the model's unfused layer code against the fused op."""
    from paddlemix.models.emu3.configuration_emu3 import Emu3Config
    from paddlemix.models.emu3.modeling_emu3 import Emu3DecoderLayer, Emu3KVCache, additive_mask, rope_inv_freq

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, img_token_id=3, boi_token_id=4, eoi_token_id=5,
               eol_token_id=6, eof_token_id=7)
    cfg = Emu3Config(vocab_size=64, hidden_size=512, intermediate_size=1376, num_hidden_layers=1,
                     num_attention_heads=8, num_key_value_heads=2, **ids)
    layer = Emu3DecoderLayer(cfg, 0)
    for p in layer.parameters():
        p.set_value(paddle.to_tensor((rng.standard_normal(p.shape) / np.sqrt(p.shape[0])).astype("float32")))
    inv_freq = paddle.to_tensor(rope_inv_freq(cfg, 1024))
    out = []
    for batch in (1, 2):
        cache = Emu3KVCache.for_model(cfg, batch, 1024, paddle.float32)
        for buf in cache.keys + cache.values:
            buf.set_value(paddle.to_tensor(rng.standard_normal(buf.shape).astype("float32")))
        cache.length = 1000
        x = paddle.to_tensor(rng.standard_normal((batch, 1, 512)).astype("float32"))
        pos = paddle.full([batch, 1], 1000, "int64")
        mask = additive_mask(paddle.ones([batch, 1024], "int64") * (paddle.arange(1024) <= 1000).astype("int64"),
                             1, 1000, paddle.float32)
        out.append(("decoder_step", f"layer of the LM config, B={batch}, 1001 of 1024 slots",
                    lambda x=x, p=pos, m=mask, c=cache: layer(x, p, inv_freq, m, c),
                    lambda x=x, p=pos, m=mask, c=cache: layer.decode_step(x, p, inv_freq, m, c)))
    return out


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, Paddle {paddle.__version__}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads (both sides)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to benchmarks/RESULTS.md")
    ap.add_argument("--ops", help="only the cases whose op name starts with one of these (comma-separated)")
    args = ap.parse_args()
    if ops.extension() is None:
        sys.exit("paddlemix_ops is not available: build it (cd external_ops && python setup.py install) and make sure "
                 "PADDLEMIX_DISABLE_EXT_OPS is not set")
    ops.CPU_EXT_OPS = ALL_OPS  # time every kernel, whatever the default choice is
    paddlemix.set_cpu_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    rows = []
    with paddle.no_grad():
        for op, shape, fb, ext in cases(rng):
            if args.ops and not op.startswith(tuple(args.ops.split(","))):
                continue
            same = all(np.array_equal(a.numpy(), b.numpy()) or np.allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
                       for a, b in zip(_as_tuple(fb()), _as_tuple(ext())))
            t_fb, t_ext = best_time(fb, args.repeats), best_time(ext, args.repeats)
            rows.append((op, shape, t_fb * 1e3, t_ext * 1e3, t_fb / t_ext, same))
            print(f"{op:17s} {shape:45s} fallback {t_fb * 1e3:9.3f} ms  extension {t_ext * 1e3:9.3f} ms  "
                  f"x{t_fb / t_ext:7.1f}  {'same' if same else 'DIFFERENT'}", flush=True)
    lines = [
        "## CPU ops vs fallback",
        "",
        f"`python benchmarks/bench_ops.py --repeats {args.repeats} --threads {args.threads}"
        f"{f' --ops {args.ops}' if args.ops else ''}` on "
        f"{datetime.date.today().isoformat()}; {machine()}; {args.threads} threads; best of {args.repeats} calls after "
        f"a warm-up, float32, paddle.no_grad.",
        "",
        "| op | shape | fallback (ms) | extension (ms) | speed-up | same result |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {op} | {shape} | {fb:.3f} | {ext:.3f} | {sp:.1f}x | {'yes' if same else 'NO'} |"
              for op, shape, fb, ext, sp, same in rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if not args.no_append:
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write("\n" + text)


def _as_tuple(x):
    return x if isinstance(x, (tuple, list)) else (x,)


if __name__ == "__main__":
    main()
