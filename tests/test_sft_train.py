"""Fine-tuning parity with the original train.py (sft/ fixtures: run A batch 4, run B accumulation 2), exact resume,
and clear errors. Tolerances from sft/README.md section 5."""

import json
import os
import shutil

import numpy as np
import paddle
import pytest

from paddlemix.examples.emu3 import train_sft
from paddlemix.models.emu3.modeling_emu3 import Emu3ForCausalLM
from paddlemix.trainer import trainer as trainer_module
from paddlemix.trainer.optimization import decay_parameter_names
from sft_support import load_log, read_weights, reference_argv, write_model, write_prepared, write_sample_order


@pytest.fixture(scope="module")
def setup(fixtures_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    sft = fixtures_dir / "sft"
    log_a, log_b = load_log(str(sft)), load_log(str(sft), accumulation=True)
    return {
        "root": root,
        "sft": sft,
        "tokenizer": str(fixtures_dir / "tokenizer"),
        "list": write_prepared(str(sft), str(root / "prepared")),
        "model": write_model(str(fixtures_dir), str(root / "model"), log_a["attention_dropout"]),
        "logs": {"A": log_a, "B": log_b},
        "orders": {"A": write_sample_order(log_a, str(root / "order_a.json")),
                   "B": write_sample_order(log_b, str(root / "order_b.json"))},
    }


def argv(setup, run, out, overrides=()):
    return reference_argv(setup["logs"][run], setup["model"], setup["list"], str(out), setup["tokenizer"],
                          setup["orders"][run], [("--disable_tqdm", "True")] + list(overrides))


def history(out):
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)["log_history"]


def check_against_reference(setup, run, out, trained):
    steps = setup["logs"][run]["steps"]
    got = history(out)
    assert [r["step"] for r in got] == [s["step"] for s in steps]
    for r, s in zip(got, steps):
        assert abs(r["loss"] - s["loss_exact"]) <= 5e-6, (r, s["loss_exact"])
        assert abs(r["grad_norm"] / s["grad_norm_logged"] - 1) <= 2e-6, (r, s["grad_norm_logged"])
        assert r["learning_rate"] == s["learning_rate_used"]
    ref, mine = read_weights(str(setup["sft"] / trained / "model.safetensors")), read_weights(
        os.path.join(out, "model.safetensors"))
    assert set(ref) == set(mine)
    for key in ref:
        np.testing.assert_allclose(mine[key], ref[key], rtol=0, atol=5e-6, err_msg=key)


@pytest.fixture(scope="module")
def run_a(setup):
    out = setup["root"] / "run_a"
    assert train_sft.main(argv(setup, "A", out)) == 0
    return out


def test_run_a_matches_original(setup, run_a):
    check_against_reference(setup, "A", str(run_a), "trained")
    model = Emu3ForCausalLM.from_pretrained(str(run_a))  # the final model loads as any checkpoint
    with open(setup["sft"] / "trained" / "config.json", encoding="utf-8") as f:
        assert model.config.max_position_embeddings == json.load(f)["max_position_embeddings"]


def test_run_b_gradient_accumulation_matches_original(setup):
    out = setup["root"] / "run_b"
    assert train_sft.main(argv(setup, "B", out)) == 0
    check_against_reference(setup, "B", str(out), "trained_accum")


def test_decay_set_and_first_step_gradients(setup):
    """The decay groups of the reference optimizer, and the first backward's gradients (before clipping)."""
    log = setup["logs"]["A"]
    model = Emu3ForCausalLM.from_pretrained(setup["model"])
    assert sorted(decay_parameter_names(model)) == sorted(log["weight_decay"]["decayed"])
    refs = np.load(setup["sft"] / "dataset_refs.npz")
    order = log["steps"][0]["microbatch_sample_order"][0]
    model.train()
    loss = model(paddle.to_tensor(refs["input_ids"][order]), attention_mask=paddle.to_tensor(refs["attention_mask"][order]),
                 labels=paddle.to_tensor(refs["labels_only_vision"][order])).loss
    assert abs(float(loss) - log["steps"][0]["loss_exact"]) <= 5e-6
    loss.backward()
    grads = np.load(setup["sft"] / "first_step_grads.npz")
    params = dict(model.named_parameters())
    linear = model._linear_weight_names()
    for key in grads.files:
        g = params[key].grad.numpy()
        np.testing.assert_allclose(g.T if key in linear else g, grads[key], rtol=0, atol=5e-7, err_msg=key)


def test_resume_is_exact(setup, run_a, monkeypatch):
    """A run killed during step 3 and started again equals the uninterrupted run (losses and weights, bitwise)."""
    out = setup["root"] / "interrupted"
    extra = [("--save_steps", "1"), ("--save_strategy", "steps"), ("--save_total_limit", "1")]
    calls = {"n": 0}
    real_collate = trainer_module.collate

    def failing_collate(samples):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed during step 3")
        return real_collate(samples)

    monkeypatch.setattr(trainer_module, "collate", failing_collate)
    with pytest.raises(KeyboardInterrupt):
        train_sft.main(argv(setup, "A", out, extra))
    assert sorted(os.listdir(out)) == ["checkpoint-2"]  # save_total_limit 1 removed checkpoint-1
    assert os.path.isfile(out / "checkpoint-2" / "DONE")
    Emu3ForCausalLM.from_pretrained(str(out / "checkpoint-2"))
    monkeypatch.setattr(trainer_module, "collate", real_collate)
    assert train_sft.main(argv(setup, "A", out, extra)) == 0
    keys = ("step", "loss", "learning_rate", "grad_norm")
    assert [[r[k] for k in keys] for r in history(str(out))] == [[r[k] for k in keys] for r in history(str(run_a))]
    ref, mine = read_weights(str(run_a / "model.safetensors")), read_weights(str(out / "model.safetensors"))
    for key in ref:
        np.testing.assert_array_equal(mine[key], ref[key], err_msg=key)


def test_checkpoint_of_another_model_is_refused(setup, run_a, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(run_a, out / "checkpoint-1", ignore=shutil.ignore_patterns("checkpoint-*"))
    cfg = json.loads((out / "checkpoint-1" / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (out / "checkpoint-1" / "config.json").write_text(json.dumps(cfg))
    (out / "checkpoint-1" / "DONE").write_text("1\n")
    with pytest.raises(ValueError, match="checkpoint of another model"):
        train_sft.main(argv(setup, "A", out))


@pytest.mark.parametrize("overrides,error,match", [
    ([("--bf16", "True")], ValueError, "needs a GPU"),
    ([("--sharding", "stage2")], ValueError, "needs GPUs"),
    ([("--per_device_train_batch_size", "8")], ValueError, "fewer than one global batch"),
    ([("--max_position_embeddings", "40")], ValueError, "more than model_max_length"),
    ([("--data_path", "/nonexistent/train.json")], FileNotFoundError, "data list not found"),
    ([("--sample_order", "/nonexistent/order.json")], FileNotFoundError, "--sample_order"),
])
def test_bad_arguments_fail_before_training(setup, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        train_sft.main(argv(setup, "A", tmp_path / "out", overrides))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_sample_order_is_checked(setup, tmp_path):
    bad = tmp_path / "order.json"
    bad.write_text(json.dumps([[0, 1, 2, 9]]))
    with pytest.raises(ValueError, match="sample_order"):
        train_sft.main(argv(setup, "A", tmp_path / "out", [("--sample_order", str(bad))]))


def test_deepspeed_config_maps_to_sharding(setup, tmp_path, caplog):
    """The original's --deepspeed zero3.json becomes --sharding stage3 (refused on a CPU, where it cannot run)."""
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with caplog.at_level("INFO"), pytest.raises(ValueError, match="--sharding needs GPUs"):
        train_sft.main(argv(setup, "A", tmp_path / "out", [("--deepspeed", str(zero3))]))
    assert "--sharding stage3" in caplog.text


T2I_SFT_SH = """--model_name_or_path BAAI/Emu3-Gen --deepspeed {zero3} --data_path data.json --null_prompt_prob 0.05
--apply_loss_on_only_vision True --apply_loss_on_only_text False --image_area 518400 --max_position_embeddings 10240
--output_dir logs/Emu3-T2I-SFT-Trial --bf16 True --tf32 True --num_train_epochs 4 --per_device_train_batch_size 2
--gradient_accumulation_steps 4 --eval_strategy no --save_strategy steps --save_steps 500 --save_total_limit 10
--learning_rate 1e-5 --min_learning_rate 1e-6 --weight_decay 0.1 --max_grad_norm 5.0 --adam_beta1 0.9 --adam_beta2 0.95
--adam_epsilon 1e-6 --warmup_steps 30 --lr_scheduler_type cosine_with_min_lr --logging_steps 1
--gradient_checkpointing True --dataloader_num_workers 4 --report_to wandb tensorboard --run_name Emu3-T2I-SFT-Trial"""


def test_original_t2i_sft_sh_flags_parse(tmp_path, caplog):
    """Every flag of the original scripts/t2i_sft.sh is accepted; the Trainer-only ones are mapped or logged."""
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}))
    args = train_sft.parse_args(T2I_SFT_SH.format(zero3=zero3).split())
    with caplog.at_level("INFO"):
        train_sft.map_trainer_flags(args)
    assert args.sharding == "stage3" and args.bf16 and args.gradient_checkpointing and args.save_steps == 500
    for flag in ("--deepspeed", "--tf32", "--dataloader_num_workers", "--report_to", "--run_name"):
        assert flag in caplog.text


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        train_sft.parse_args(["--help"])
    assert e.value.code == 0 and "--per_device_train_batch_size" in capsys.readouterr().out


def test_vqa_and_text_tasks_train(setup, tmp_path):
    """--task vqa / text train end to end (their layouts and labels are checked in test_sft_datasets.py)."""
    feature = tmp_path / "feature"
    feature.mkdir()
    codes = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.savez(feature / "q.npz", name=np.str_("q"), texts=np.str_(""), images=codes,
             question=np.str_("what is it?"), answer=np.str_("a box"))
    np.savez(feature / "t.npz", name=np.str_("t"), texts=np.str_("a red circle under a blue box"))
    for task, files in (("vqa", ["q.npz"]), ("text", ["t.npz"])):
        listing = tmp_path / f"{task}.json"
        listing.write_text(json.dumps({"prefix": str(feature), "path_list": files}))
        out = tmp_path / task
        assert train_sft.main(["--model_name_or_path", setup["model"], "--tokenizer_path", setup["tokenizer"],
                               "--data_path", str(listing), "--output_dir", str(out), "--task", task,
                               "--per_device_train_batch_size", "1", "--max_steps", "2", "--warmup_steps", "0",
                               "--max_position_embeddings", "80", "--learning_rate", "1e-3", "--disable_tqdm", "True",
                               "--save_strategy", "no"]) == 0
        losses = [r["loss"] for r in history(str(out))]
        assert all(np.isfinite(losses)) and losses[1] < losses[0]  # lr 1e-3 on one sample: the loss falls
