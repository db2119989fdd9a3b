"""Data-parallel fine-tuning: 2 processes under paddle.distributed.launch (CPU, gloo) with batch b equal one process
with batch b and accumulation 2, i.e. the original's run B (sft/trained_accum)."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from sft_support import load_log, read_weights, reference_argv, write_model, write_prepared, write_sample_order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("checkpointing", ["False", "True"])
def test_two_processes_equal_accumulation(fixtures_dir, tmp_path, checkpointing):
    """Also with recompute per decoder layer (the same arithmetic) under paddle.DataParallel."""
    sft = fixtures_dir / "sft"
    log = load_log(str(sft), accumulation=True)
    accumulation = int(log["train_py_arguments"][log["train_py_arguments"].index("--gradient_accumulation_steps") + 1])
    args = reference_argv(
        log, write_model(str(fixtures_dir), str(tmp_path / "model"), log["attention_dropout"]),
        write_prepared(str(sft), str(tmp_path / "prepared")), str(tmp_path / "out"), str(fixtures_dir / "tokenizer"),
        write_sample_order(log, str(tmp_path / "order.json")),
        [("--gradient_accumulation_steps", "1"), ("--disable_tqdm", "True"), ("--threads", "1"),
         ("--gradient_checkpointing", checkpointing)],
    )
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(accumulation),
           "--master", f"127.0.0.1:{free_port()}", "--log_dir", str(tmp_path / "log"),
           os.path.join(REPO, "paddlemix", "examples", "emu3", "train_sft.py")] + args
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
            proc.wait()
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "log").glob("workerlog.*")))
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:] + logs
    ref = read_weights(str(sft / "trained_accum" / "model.safetensors"))
    mine = read_weights(str(tmp_path / "out" / "model.safetensors"))
    for key in ref:
        np.testing.assert_allclose(mine[key], ref[key], rtol=0, atol=5e-6, err_msg=key)
    assert "2 process(es)" in logs or f"{accumulation} process(es)" in logs


def test_data_shorter_than_the_ranks_is_an_error(tmp_path, monkeypatch):
    """Each rank needs its share of a global batch: 4 samples over 2 ranks x batch 4 cannot make one."""
    from paddlemix.trainer import trainer as trainer_module
    from paddlemix.trainer.trainer import TrainingConfig, train

    monkeypatch.setattr(trainer_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(trainer_module.dist, "get_rank", lambda: 0)
    config = TrainingConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, min_learning_rate=0.0)
    with pytest.raises(ValueError, match=r"fewer than one global batch of 8 .* 2 process"):
        train(None, [None] * 4, config)
