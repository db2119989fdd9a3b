"""Helpers shared by both benchmark workers (ours in the package's venv, the reference in benchmarks/.ref_venv).

Only the standard library and numpy: this module is imported on both sides.
"""

import json
import os
import sys
import time


def set_thread_env(threads):
    """Thread count for every math library, set before paddle/torch are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def rss_kib(field):
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in KiB."""
    with open("/proc/self/status", "r", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def timed(fn, repeats):
    """Run fn() `repeats` times; return (median seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], out


def step_time(gen, steps, repeats):
    """Seconds per decode step: generate(steps + 1) - generate(1), paired (back to back) and the median over the
    repeats of these differences, so that the prompt's prefill cancels and a noisy neighbour spoils one pair at most.
    gen(n) returns ids [B, prompt + new]; if it stopped early (eos), the steps it really ran count.
    Returns (seconds per step, output of the last long run)."""
    diffs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        short = gen(1)
        t1 = time.perf_counter()
        out = gen(steps + 1)
        ran = max(out.shape[1] - short.shape[1], 1)
        diffs.append(((time.perf_counter() - t1) - (t1 - t0)) / ran)
    diffs.sort()
    return diffs[len(diffs) // 2], out


def decode_timing(gen, job, batch):
    """{"decode step bB": seconds per step, "ids bB": new ids}, and for batch 1 with job["floor_bytes"] also
    "bandwidth b1": the best copy bandwidth measured right before and right after the step timing, in the same
    process (the floor suite divides the step by the floor at that bandwidth, so that both come from the same
    moment of a machine whose bandwidth drifts by 20% over minutes)."""
    res = {}
    measure = batch == 1 and job.get("floor_bytes")
    before = copy_bandwidth(job["floor_bytes"], 3) if measure else 0.0
    res[f"decode step b{batch}"], out = step_time(gen, job["decode_steps"], job["repeats"])
    if measure:
        res["bandwidth b1"] = max(before, copy_bandwidth(job["floor_bytes"], 3))
    res[f"ids b{batch}"] = out
    return res


def grid_tokens(height, width):
    """Tokens that one image of height x width visual tokens takes after the image token: h rows of w visual
    tokens plus an end-of-line each, then end-of-frame, end-of-image, end-of-sequence."""
    return height * (width + 1) + 3


def t2i_prompt(job, negative):
    """A text-to-image prompt of token ids in Emu3's layout: bos, text, boi, "H*W" meta text, image token.

    Text ids are drawn from the ordinary (non-special) range with a fixed seed, so both sides get the same prompt.
    """
    import numpy as np

    lm = job["lm_config"]
    rng = np.random.default_rng(7 if negative else 5)
    text = rng.integers(0, job["text_vocab"], size=job["t2i_prompt_len"]).tolist()
    meta = rng.integers(0, job["text_vocab"], size=5).tolist()  # stands for the tokens of "32*32"
    return [lm["bos_token_id"]] + text + [lm["boi_token_id"]] + meta + [lm["img_token_id"]]


def vqa_prompt(job):
    """A VQA prompt: bos, text, boi, meta, image token, a grid of visual tokens with eol after each row, eof, eoi,
    then the question's text ids."""
    import numpy as np

    lm = job["lm_config"]
    rng = np.random.default_rng(11)
    h, w = job["vqa_grid"]
    ids = [lm["bos_token_id"]] + rng.integers(0, job["text_vocab"], size=4).tolist()
    ids += [lm["boi_token_id"]] + rng.integers(0, job["text_vocab"], size=5).tolist() + [lm["img_token_id"]]
    codes = rng.integers(0, job["codebook_size"], size=(h, w))
    for row in codes:
        ids += [job["first_visual_id"] + int(c) for c in row] + [lm["eol_token_id"]]
    ids += [lm["eof_token_id"], lm["eoi_token_id"]]
    ids += rng.integers(0, job["text_vocab"], size=job["vqa_question_len"]).tolist()
    return ids


def lm_prompts(job):
    """The LM case's prompts, the same on both sides: (prefill ids [1, prefill_len], {batch: ids [batch, len]})."""
    import numpy as np

    rng = np.random.default_rng(3)
    prefill = rng.integers(0, job["text_vocab"], (1, job["prefill_len"]))
    decode = {b: rng.integers(0, job["text_vocab"], (b, job["decode_prompt_len"])) for b in job["decode_batches"]}
    return prefill, decode


def test_image(size):
    """A deterministic smooth test image [1, 3, size, size] in [-1, 1] (float32)."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    img = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x + y))])
    return img[None].astype(np.float32)


def main_worker(run_job):
    """Entry point of a worker: argv = job.json result.json; the job's threads are applied before any import.
    Under paddle.distributed.launch every rank runs the job and rank 0 writes the result."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} JOB.json RESULT.json")
    with open(sys.argv[1], "r", encoding="utf-8") as f:
        job = json.load(f)
    set_thread_env(job["threads"])
    result = run_job(job)
    if os.environ.get("PADDLE_TRAINER_ID", "0") != "0":
        return
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def copy_bandwidth(nbytes, repeats):
    """Memory bandwidth of a large numpy copy, bytes read + bytes written per second, best of `repeats`.

    Source and destination sit at the same offset in a page (16 bytes, where glibc puts a large allocation served by
    a fresh mmap): with other relative offsets the copy can run into 4K aliasing (a load whose address matches a
    recent store's low 12 bits waits for it), which on the benchmark machine made the same copy 3x slower once glibc
    served the arrays from its heap (paddlemix raises its mmap threshold)."""
    import numpy as np

    n = nbytes // 4

    def placed():
        buf = np.empty(n + 2048, np.float32)
        start = ((16 - buf.ctypes.data) % 4096) // 4
        return buf[start:start + n]

    src, dst = placed(), placed()
    src.fill(1.0)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best
