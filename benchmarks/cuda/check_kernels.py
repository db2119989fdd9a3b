"""Check and time the CUDA kernels of external_ops on a GPU without Paddle: CuPy loads the very device code the
extension compiles (external_ops/csrc/kernels/ops.cuh), every kernel is compared with the numpy references of
tests/op_reference.py on random data, then timed. The card's memory bandwidth is measured in the same run with a
device-to-device copy, and each kernel's bytes moved are reported as a fraction of it.

    PYTHONUNBUFFERED=1 python benchmarks/cuda/check_kernels.py --out results.md

Exit status 1 when a check fails.
"""

import argparse
import os
import sys
import time

import cupy as cp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "external_ops", "csrc", "kernels")
sys.path.insert(0, os.path.join(ROOT, "tests"))
from op_reference import F32, np_cfg_sample, np_rms_norm, np_rotary, np_vq_nearest, vq_inputs  # noqa: E402

FAILURES = []
ROWS = []


def load_module():
    with open(os.path.join(KERNELS, "ops.cuh")) as f:
        code = f.read()
    cuda_include = os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "include")
    opts = ("-std=c++17", f"-I{KERNELS}", f"-I{cuda_include}")
    try:
        mod = cp.RawModule(code=code, options=opts)
        mod.get_function("pmx_rms_norm_f32")
        return mod, "nvrtc"
    except Exception as exc:  # NVRTC can miss the CUDA headers: nvcc builds the same source
        print(f"NVRTC failed ({type(exc).__name__}: {str(exc)[:200]}), using nvcc", flush=True)
        mod = cp.RawModule(code=code, options=("-std=c++17", f"-I{KERNELS}"), backend="nvcc")
        mod.get_function("pmx_rms_norm_f32")
        return mod, "nvcc"


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (round to nearest even), as uint16."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def timeit(fn, iters=50):
    fn()
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / iters * 1e-3  # seconds per call


def check(name, ok, detail=""):
    print(f"[{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)
    if not ok:
        FAILURES.append(f"{name} {detail}")


def record(kernel, shape, seconds, nbytes, bandwidth, note=""):
    rate = nbytes / seconds
    ROWS.append((kernel, shape, seconds * 1e6, nbytes / 1e6, rate / 1e9, rate / bandwidth, note))
    print(f"  {kernel} {shape}: {seconds * 1e6:.1f} us, {nbytes / 1e6:.1f} MB, {nbytes / seconds / 1e9:.0f} GB/s, "
          f"{100 * nbytes / seconds / bandwidth:.0f}% of copy bandwidth {note}", flush=True)


def measure_bandwidth():
    n = 1 << 28  # 1 GiB of float32
    a = cp.ones(n, cp.float32)
    b = cp.empty_like(a)
    sec = timeit(lambda: cp.cuda.runtime.memcpyAsync(b.data.ptr, a.data.ptr, a.nbytes, 3, 0), iters=20)
    bw = 2 * a.nbytes / sec
    print(f"device-to-device copy: {2 * a.nbytes / 1e9:.2f} GB moved in {sec * 1e3:.3f} ms = {bw / 1e9:.0f} GB/s",
          flush=True)
    del a, b
    return bw


# ----------------------------------------------------------------------------------------------------- rms_norm
def run_rms_norm(mod, bw, rng):
    for dtype in ("f32", "bf16", "f16"):
        fn = mod.get_function(f"pmx_rms_norm_{dtype}")
        for rows, hidden in ((257, 4096), (33, 1000), (7, 4099)):
            x = (rng.standard_normal((rows, hidden)) * 2).astype(F32)
            w = rng.standard_normal(hidden).astype(F32)
            xd, wd, ref = _rms_io(dtype, x, w, 1e-6)
            y = cp.empty_like(xd)
            threads = 512 if hidden >= 4096 else 256
            fn((rows,), (threads,), (xd, wd, y, np.int64(rows), np.int32(hidden), np.float32(1e-6)))
            got = _to_f32(dtype, y)
            tol = dict(rtol=2e-5, atol=2e-6) if dtype == "f32" else dict(rtol=1.6e-2, atol=1e-2)
            ok = np.allclose(got, ref, **tol)
            check(f"rms_norm {dtype} [{rows},{hidden}]", ok, f"max err {np.abs(got - ref).max():.2e}")
        rows, hidden = 16384, 4096
        x = cp.random.standard_normal((rows, hidden), dtype=cp.float32)
        xd = _cast_dev(dtype, x)
        wd = _cast_dev(dtype, cp.random.standard_normal(hidden, dtype=cp.float32))
        y = cp.empty_like(xd)
        sec = timeit(lambda: fn((rows,), (512,), (xd, wd, y, np.int64(rows), np.int32(hidden), np.float32(1e-6))))
        record(f"rms_norm {dtype}", f"[{rows}, {hidden}]", sec, 2 * xd.nbytes + wd.nbytes, bw)


def _cast_dev(dtype, x):
    if dtype == "f32":
        return x
    if dtype == "f16":
        return x.astype(cp.float16)
    return cp.asarray(to_bf16_bits(cp.asnumpy(x)))


def _to_f32(dtype, y):
    y = cp.asnumpy(y)
    return from_bf16_bits(y) if dtype == "bf16" else y.astype(np.float32)


def _round(dtype, x):
    if dtype == "f32":
        return x.astype(F32)
    if dtype == "f16":
        return x.astype(np.float16).astype(F32)
    return from_bf16_bits(to_bf16_bits(x.astype(F32)))


def _rms_io(dtype, x, w, eps):
    xr, wr = _round(dtype, x), _round(dtype, w)
    if dtype == "f32":
        ref = np_rms_norm(xr, wr, eps)
    else:  # float32 statistics, rounded to the dtype, then the weight multiply rounded again
        x64 = xr.astype(np.float64)
        normed = _round(dtype, x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps))
        ref = _round(dtype, wr * normed)
    return _cast_dev(dtype, cp.asarray(xr)), _cast_dev(dtype, cp.asarray(wr)), ref


# ----------------------------------------------------------------------------------------------- rotary
def run_rotary(mod, bw, rng):
    for dtype in ("f32", "bf16", "f16"):
        fn = mod.get_function(f"pmx_rotary_{dtype}")
        for b, l, hq, hk, d in ((2, 7, 8, 2, 128), (1, 5, 4, 4, 64)):
            q = rng.standard_normal((b, l, hq, d)).astype(F32)
            k = rng.standard_normal((b, l, hk, d)).astype(F32)
            pos = rng.integers(0, 5000, (b, l)).astype(np.int64)
            inv = (1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(F32)
            qd, kd = _cast_dev(dtype, cp.asarray(_round(dtype, q))), _cast_dev(dtype, cp.asarray(_round(dtype, k)))
            qo, ko = cp.empty_like(qd), cp.empty_like(kd)
            fn((b * l,), (256,), (qd, kd, cp.asarray(pos), cp.asarray(inv), qo, ko, np.int32(hq), np.int32(hk),
                                  np.int32(d)), shared_mem=4 * d)
            tol = 2e-3 if dtype == "f32" else 3e-2
            for name, src, out in (("q", q, qo), ("k", k, ko)):
                ref = np_rotary(_round(dtype, src), pos, inv)
                got = _to_f32(dtype, out)
                check(f"rotary {dtype} {name} [{b},{l},{hq if name == 'q' else hk},{d}]",
                      np.allclose(got, ref, atol=tol, rtol=tol), f"max err {np.abs(got - ref).max():.2e}")
        b, l, hq, hk, d = 1, 8192, 32, 8, 128
        qd = _cast_dev(dtype, cp.random.standard_normal((b, l, hq, d), dtype=cp.float32))
        kd = _cast_dev(dtype, cp.random.standard_normal((b, l, hk, d), dtype=cp.float32))
        pos = cp.arange(l, dtype=cp.int64)
        inv = cp.asarray((1.0 / 10000 ** (np.arange(0, d, 2) / d)).astype(F32))
        qo, ko = cp.empty_like(qd), cp.empty_like(kd)
        args = (qd, kd, pos, inv, qo, ko, np.int32(hq), np.int32(hk), np.int32(d))
        sec = timeit(lambda: fn((b * l,), (256,), args, shared_mem=4 * d))
        record(f"rotary {dtype}", f"q [{b},{l},{hq},{d}] k [{b},{l},{hk},{d}]", sec,
               2 * (qd.nbytes + kd.nbytes) + pos.nbytes, bw)


# ----------------------------------------------------------------------------------------------- vq_nearest
def vq_launch(mod, z, e):
    n, c = z.shape
    k = e.shape[0]
    row_blocks = (n + 511) // 512 if c == 4 else (n + 127) // 128
    seg = max(1, min((528 + row_blocks - 1) // row_blocks, (k + 1023) // 1024))
    seg_len = (k + seg - 1) // seg
    ee = cp.empty(k, cp.float32)
    bd = cp.empty((seg, n), cp.float32)
    bi = cp.empty((seg, n), cp.int32)
    out = cp.empty(n, cp.int64)
    norms, merge = mod.get_function("pmx_vq_norms"), mod.get_function("pmx_vq_merge")
    part = mod.get_function("pmx_vq_partial_c4" if c == 4 else "pmx_vq_partial_generic")

    def run():
        norms(((k + 255) // 256,), (256,), (e, ee, np.int32(k), np.int32(c)))
        if c == 4:
            part((row_blocks, seg), (128,), (z, e, ee, bd, bi, out, np.int32(n), np.int32(k), np.int32(seg_len)))
        else:
            part((row_blocks, seg), (128,), (z, e, ee, bd, bi, out, np.int32(n), np.int32(k), np.int32(c),
                                             np.int32(seg_len)))
        if seg > 1:
            merge(((n + 255) // 256,), (256,), (bd, bi, out, np.int32(n), np.int32(seg)))

    return run, out


def run_vq(mod, bw, rng):
    for n, k, c, ties in ((2000, 32768, 4, False), (1037, 4099, 4, True), (300, 1000, 8, True), (77, 33, 3, False)):
        z, e = vq_inputs(rng, n, k, c, ties)
        run, out = vq_launch(mod, cp.asarray(z), cp.asarray(e))
        run()
        ref = np.concatenate([np_vq_nearest(z[i : i + 256], e) for i in range(0, n, 256)])
        got = cp.asnumpy(out)
        check(f"vq_nearest [{n},{c}] x [{k},{c}]{' ties' if ties else ''}", np.array_equal(got, ref),
              f"{int((got != ref).sum())} mismatches")
    for n, k in ((8100 * 8, 32768), (1 << 24, 16)):
        z = cp.random.standard_normal((n, 4), dtype=cp.float32)
        e = cp.random.standard_normal((k, 4), dtype=cp.float32)
        run, out = vq_launch(mod, z, e)
        sec = timeit(run, iters=10 if k > 1000 else 50)
        flops = 2.0 * n * k * 4
        record("vq_nearest f32", f"[{n},4] x [{k},4]", sec, z.nbytes + e.nbytes + out.nbytes, bw,
               f"{flops / sec / 1e12:.1f} TFLOP/s (dot products)")


# ----------------------------------------------------------------------------------------------- cfg_sample
CFG_CACHE_BYTES = 160 * 1024  # score cache of cfg_select, as launch.cu sets it on cards that allow it


def cfg_launch(mod, dtype, cond, uncond, allowed, random, scale, top_k, top_p, temperature):
    b, v = cond.shape
    chunks = min(256, (v + 2047) // 2048)
    guide = uncond is not None and scale is not None and scale != 1
    partial = cp.empty((b, chunks, 4), cp.float32)
    out = cp.empty(b, cp.int64)
    al = cp.asarray(allowed if allowed is not None else np.array([[0, v]] * b, np.int64))
    rnd = cp.asarray(random if random is not None else np.zeros(b, F32))
    un = uncond if guide else cond
    stats, select = mod.get_function(f"pmx_cfg_stats_{dtype}"), mod.get_function(f"pmx_cfg_select_{dtype}")
    use_p = top_p is not None and top_p < 1
    use_t = random is not None and temperature != 1
    sel_args = (cond, un, al, rnd, out, partial, np.int64(v), np.int32(chunks), np.int32(guide),
                np.float32(scale if guide else 1.0), np.int32(random is None), np.int32(top_k or 0), np.int32(use_p),
                np.float32(1.0 - top_p if use_p else 0.0), np.int32(use_t), np.float32(temperature if use_t else 1),
                np.int32(CFG_CACHE_BYTES // 4))
    select.max_dynamic_shared_size_bytes = CFG_CACHE_BYTES

    def run():
        stats((chunks, b), (256,), (cond, un, np.int64(v), np.int32(chunks), np.int32(guide), partial))
        select((b,), (1024,), sel_args, shared_mem=CFG_CACHE_BYTES)

    return run, out


CFG_CASES = [  # batch, vocab, allowed, scale, top_k, top_p, temperature, sampling, decimals
    (2, 1037, [(100, 900), (0, 1037)], 3.0, 0, 1.0, 1.0, False, None),
    (3, 2053, [(1000, 2053), (0, 1500), (300, 700)], 5.0, 64, 1.0, 1.0, True, None),
    (2, 999, [(5, 900), (0, 999)], 2.0, 1, 1.0, 1.0, True, None),
    (2, 1111, [(500, 530), (7, 13)], 3.0, 100, 1.0, 1.0, True, None),
    (2, 800, [(123, 124), (799, 800)], 3.0, 50, 0.9, 0.7, True, None),
    (1, 3001, None, None, 0, 1.0, 1.0, True, None),
    (2, 4099, [(2000, 4099), (0, 4099)], 4.0, 0, 0.8, 1.0, True, None),
    (4, 5003, [(1003, 4003)] * 4, 3.0, 256, 0.9, 0.7, True, None),
    (2, 1500, [(0, 1200), (300, 1500)], 1.5, 0, 1.0, 1.8, True, None),
    (2, 1200, [(100, 1100), (0, 1200)], 2.0, 40, 0.7, 1.0, True, 0),
    (1, 777, [(10, 500)], None, 0, 1.0, 1.0, False, 0),
    (2, 184622, [(151854, 151854 + 32768)] * 2, 3.0, 2048, 1.0, 1.0, True, None),
    (2, 184622, [(151854, 151854 + 32768)] * 2, 3.0, 2048, 0.9, 0.8, True, None),
    (1, 184622, None, 3.0, 2048, 0.9, 1.0, True, None),  # range larger than the shared-memory score cache
    (1, 60000, [(5, 59000)], 2.0, 0, 0.95, 1.0, True, 1),
    (1, 184622, None, 2.0, 1000, 1.0, 1.0, True, None),  # top-k alone on a range larger than the score cache
    (1, 40000, [(100, 32868)], None, 2048, 1.0, 1.0, True, 0),  # k-th's histogram bin: > 256 tied scores
    (1, 40000, [(100, 32868)], None, 2048, 1.0, 1.0, True, -1),  # k-th's bin larger than the free shared memory
]


def exact_pick(cond, uncond, scale, allowed, top_k, top_p, temperature, random, row, token):
    """Whether `token` is row's inverse-CDF pick in float64 (the draw within 1e-6 of the token's CDF interval), with
    the steps of np_cfg_sample. On the tie-heavy cases (about 30000 kept scores, most of them tiny) the float32
    reference's sequential cumsum drifts by up to ~2e-3 of the CDF (measured on an H200, 2026-12-02: the kernel's
    token sat inside its float64 interval in every such mismatch, for f32, bf16 and f16 alike), so a sampled token
    that differs from the float32 reference passes when exact arithmetic picks it."""

    def log_softmax(x):
        x = x.astype(np.float64) - x.max()
        return x - np.log(np.exp(x).sum())

    s = log_softmax(cond[row])
    if uncond is not None and scale != 1:
        u = log_softmax(uncond[row])
        s = scale * (s - u) + u
    if allowed is not None:
        keep = np.zeros(s.shape, bool)
        keep[allowed[row][0] : allowed[row][1]] = True
        s = np.where(keep, s, -np.inf)
    if temperature != 1:
        s = s / temperature
    if top_k:
        s = np.where(s < np.sort(s)[::-1][min(top_k, s.size) - 1], -np.inf, s)
    if top_p < 1:
        order = np.argsort(s, kind="stable")
        ps = np.exp(s[order] - s.max())
        drop = np.cumsum(ps / ps.sum()) <= 1 - top_p
        drop[-1] = False
        s = s.copy()
        s[order[drop]] = -np.inf
    p = np.exp(s - s.max())
    cdf = np.cumsum(p / p.sum())
    lo = cdf[token - 1] if token > 0 else 0.0
    return p[token] > 0 and lo - 1e-6 <= float(random[row]) <= cdf[token] + 1e-6


def run_cfg(mod, bw, rng):
    for dtype in ("f32", "bf16", "f16"):
        for case in CFG_CASES:
            b, v, allowed, scale, top_k, top_p, temp, sampling, decimals = case
            mism, draws, exact = 0, 0, 0
            for rep in range(4 if sampling else 1):
                cond = (rng.standard_normal((b, v)) * 3).astype(F32)
                uncond = (rng.standard_normal((b, v)) * 3).astype(F32) if scale is not None else None
                if decimals is not None:
                    cond = np.round(cond, decimals)
                    uncond = np.round(uncond, decimals) if uncond is not None else None
                cond, uncond = _round(dtype, cond), _round(dtype, uncond) if uncond is not None else None
                random = rng.random(b).astype(F32) if sampling else None
                al = np.array(allowed, np.int64) if allowed is not None else None
                ref = np_cfg_sample(cond, uncond, scale, al, top_k, top_p, temp, random)
                run, out = cfg_launch(mod, dtype, _cast_dev(dtype, cp.asarray(cond)),
                                      _cast_dev(dtype, cp.asarray(uncond)) if uncond is not None else None,
                                      al, random, scale, top_k, top_p, temp)
                run()
                got = cp.asnumpy(out)
                for row in np.flatnonzero(got != ref):
                    if sampling and exact_pick(cond, uncond, scale, al, top_k, top_p, temp, random, row, got[row]):
                        exact += 1
                    else:
                        mism += 1
                draws += b
            label = (f"cfg_sample {dtype} B={b} V={v} allowed={'yes' if allowed else 'no'} scale={scale} "
                     f"top_k={top_k} top_p={top_p} T={temp} {'sample' if sampling else 'greedy'}"
                     f"{f' ties (rounded to {decimals} decimals)' if decimals is not None else ''}")
            note = f" ({exact} differ from the float32 reference, each the float64 pick)" if exact else ""
            check(label, mism == 0, f"{mism}/{draws} token mismatches{note}")
    b, v = 2, 184622
    allowed = np.array([(151854, 151854 + 32768)] * b, np.int64)
    for dtype in ("f32", "bf16", "f16"):
        cond = _cast_dev(dtype, cp.random.standard_normal((b, v), dtype=cp.float32) * 3)
        uncond = _cast_dev(dtype, cp.random.standard_normal((b, v), dtype=cp.float32) * 3)
        for label, top_k, top_p, temp, random in (
            ("sample top-k 2048", 2048, 1.0, 1.0, rng.random(b).astype(F32)),
            ("sample top-k 2048 top-p 0.9 T 0.8", 2048, 0.9, 0.8, rng.random(b).astype(F32)),
            ("sample, no top-k", 0, 1.0, 1.0, rng.random(b).astype(F32)),
            ("greedy", 0, 1.0, 1.0, None),
        ):
            run, out = cfg_launch(mod, dtype, cond, uncond, allowed, random, 3.0, top_k, top_p, temp)
            sec = timeit(run, iters=200)
            record(f"cfg_sample {dtype}", f"B={b} V={v} range 32768, {label}", sec, 2 * cond.nbytes, bw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the results table (markdown) here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    cp.random.seed(args.seed)
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    t0 = time.time()
    mod, backend = load_module()
    print(f"GPU: {name}; kernels compiled with {backend} in {time.time() - t0:.1f} s", flush=True)
    bw = measure_bandwidth()
    run_rms_norm(mod, bw, rng)
    run_rotary(mod, bw, rng)
    run_vq(mod, bw, rng)
    run_cfg(mod, bw, rng)
    lines = [
        f"GPU: {name}; CuPy {cp.__version__}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, compiled with "
        f"{backend}. Device-to-device copy bandwidth (read + write): {bw / 1e9:.0f} GB/s.",
        "",
        "| kernel | shape | time per call (us) | bytes moved (MB) | GB/s | fraction of copy bandwidth | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for kernel, shape, us, mb, gbs, frac, note in ROWS:
        lines.append(f"| {kernel} | {shape} | {us:.1f} | {mb:.1f} | {gbs:.0f} | {100 * frac:.0f}% | {note} |")
    lines += ["", f"Checks against numpy: {'all passed' if not FAILURES else 'FAILED: ' + '; '.join(FAILURES)}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
