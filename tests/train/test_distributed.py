"""Data-parallel training under torchrun: two CPU processes (gloo) against one, on tiny models.

The end-to-end runs start ``python -m loratune train --nproc 2`` (torchrun's launcher) in a subprocess,
one thread per process; the units check the samplers and the sharded evaluation's gather.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_BERT, free_port, save_tiny_llama
from helpers import train_args
from loratune.cli import main
from loratune.data import DistributedLengthGroupedBatchSampler, LengthGroupedBatchSampler, RankShard
from loratune.train.config import build_config
from loratune.train.run_folder import RUN_CONFIG, restarted
from tasks.test_causal_lm import records
from tasks.test_token_cls import toy_conll
from train._ddp_workers import gather_worker, shard_batches

SRC = Path(__file__).resolve().parents[2] / "src"
LAUNCH_TIMEOUT = 300  # seconds: a launch that has not ended by then hangs


# ------------------------------------------------------------------------------------------ samplers
def test_the_ranks_split_each_global_batch_and_resume_in_the_same_order():
    lengths = np.random.default_rng(0).integers(5, 60, size=103)
    single = LengthGroupedBatchSampler(lengths, 8, shuffle=True, seed=3, mega_batches=4)
    ranks = [DistributedLengthGroupedBatchSampler(lengths, 4, num_replicas=2, rank=r, shuffle=True, seed=3,
                                                  mega_batches=4) for r in (0, 1)]  # fmt: skip
    for epoch in (0, 1):
        whole = single.batches(epoch)  # 12 batches of 8, then one of 7
        shards = [r.batches(epoch) for r in ranks]
        assert [len(s) for s in shards] == [len(r) for r in ranks] == [len(whole)] * 2
        for i, batch in enumerate(whole):  # each global batch split between the ranks, interleaved by length
            assert shards[0][i] + shards[1][i] != batch and sorted(shards[0][i] + shards[1][i]) == sorted(batch)
            assert shards[0][i] == batch[0::2] and shards[1][i] == batch[1::2]
    for r in ranks:  # resuming at global batch 5 continues the same order
        r.set_epoch(1)
        r.set_start(5)
        assert len(r) == len(whole) - 5 and list(r) == r.batches(1)[5:]
    # a last global batch of fewer examples than ranks is left out, on every rank alike
    odd = [DistributedLengthGroupedBatchSampler(lengths[:97], 4, num_replicas=2, rank=r, shuffle=True, seed=3)
           for r in (0, 1)]  # fmt: skip
    assert [len(r) for r in odd] == [len(r.batches()) for r in odd] == [12, 12]
    assert all(len(b) == 4 for r in odd for b in r.batches())


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_eval_shards_hold_every_example_exactly_once(world):
    whole = LengthGroupedBatchSampler(np.arange(21) % 7 + 3, 4, shuffle=False)  # 6 batches, the last of 1
    shards = [RankShard(whole, num_replicas=world, rank=r) for r in range(world)]
    seen = [i for s in shards for batch in s for i in batch]
    assert sorted(seen) == list(range(21))
    assert [len(s) for s in shards] == [len(list(s)) for s in shards] and sum(len(s) for s in shards) == 6


def test_sharded_evaluation_gathers_every_example_once_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    from loratune.tasks.causal_lm import TokenLossMetrics
    from loratune.tasks.seq_cls import ClassificationMetrics

    ranks = mp.start_processes(gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not ranks.join(timeout=1):  # join raises if a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the two ranks did not end within {LAUNCH_TIMEOUT} s")
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # every rank has the whole evaluation
    single = {"cls": ClassificationMetrics(3), "lm": TokenLossMetrics()}
    for batch, outputs in shard_batches(0, 1):
        single["cls" if outputs.logits is not None else "lm"].update(outputs, batch)
    cls, expected = got[0]["cls"], single["cls"].compute()
    assert cls["num_examples"] == 21 and sum(map(sum, cls["confusion_matrix"])) == 21
    assert cls.pop("confusion_matrix") == expected.pop("confusion_matrix")
    assert cls == pytest.approx(expected)
    assert got[0]["lm"] == pytest.approx(single["lm"].compute())


# ------------------------------------------------------------------------------------------ launches
@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT without dropout (each rank draws its own masks) and the packaged MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from loratune.models import resolve_model

    folder = tmp_path_factory.mktemp("bert-no-dropout")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, **TINY_BERT, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(folder)
    return folder


# every DDP run: no dropout, two epochs, a step per log line, a fixed eval split and seed, a short timeout
DDP_RUN = ["--dropout", "0", "--epochs", "2", "--log-every", "1", "--val-size", "0", "--eval-size", "25"]
DDP_RUN += ["--seed", "5", "--dist-timeout", "60"]


def ddp_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return train_args(model, data, out, *DDP_RUN, *extra, batch_size=None)


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def launch(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loratune", *argv], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def launched(argv: list[str]) -> tuple[int, str, str]:
    proc = launch(argv)
    out, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    return proc.returncode, out, err


def losses(run: Path) -> list[float]:
    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"
    ]


def files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != ".lock")


@pytest.fixture(scope="module")
def one_and_two(no_dropout_bert, toy_data, tmp_path_factory):
    """The same run (global batch 8) in one process (4 x 2 accumulation steps) and in two processes
    (2 x 2 processes x 2 accumulation steps, with activation checkpointing), each paused at step 10
    and resumed; the two-process run's stdout."""
    root = tmp_path_factory.mktemp("ddp")
    one, two = root / "one", root / "two"
    args = ddp_args(no_dropout_bert, toy_data, one, "--batch-size", "4", "--grad-accum", "2")
    assert main([*args, "--pause-at-step", "10"]) == 0
    assert main([*args, "--resume"]) == 0
    args = ddp_args(no_dropout_bert, toy_data, two, "--batch-size", "2", "--grad-accum", "2",
                    "--gradient-checkpointing", "--nproc", "2")  # fmt: skip
    code, _, err = launched([*args, "--pause-at-step", "10"])
    assert code == 0, err
    assert json.loads((two / "summary.json").read_text())["paused"]
    code, out, err = launched([*args, "--resume"])
    assert code == 0, err
    return one, two, out


def test_two_processes_train_as_one_with_the_same_global_batch(one_and_two):
    one, two, stdout = one_and_two
    assert "distributed: 2 processes (gloo), global batch 8 = 2 per process x 2 processes x 2 accumulation" in stdout
    assert len(losses(two)) == len(losses(one)) == 24
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    a, b = (
        load_file(one / "adapter" / "adapter_model.safetensors"),
        load_file(two / "adapter" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (one, two))
    assert s2["best"]["num_examples"] == s1["best"]["num_examples"] == 25  # the uneven last shard counted once
    assert s2["best"]["accuracy"] == s1["best"]["accuracy"]
    assert s2["best"]["loss"] == pytest.approx(s1["best"]["loss"], abs=1e-5)
    assert s1["world_size"] == 1 and s1["distributed"] is None and s2["world_size"] == 2
    assert s1["resumed_from_step"] == s2["resumed_from_step"] == 10 and s2["steps"] == 24
    dist = s2["distributed"]
    assert dist["global_batch_size"] == 8 and len(dist["examples_per_s_per_rank"]) == 2
    # one step all-reduces the trainable gradients (fp32), not the model
    assert dist["allreduce_bytes_per_step"] == dist["trainable_grad_bytes"] == 4 * s2["trainable_params"]
    assert s2["examples_per_s"] > 0 and s2["train_seconds"] > 0


def test_only_rank_0_writes_and_the_adapter_predicts(one_and_two, capsys):
    one, two, stdout = one_and_two
    assert files(two) == files(one)  # no second copy of anything, no stray temporary files
    records_ = [(r["type"], r["step"]) for r in map(json.loads, (two / "metrics.jsonl").read_text().splitlines())]
    assert len(records_) == len(set(records_)) == 24 + 3  # each record once (evaluations: pause, 2 epochs)
    assert stdout.count("accuracy (best)") == 1  # the summary printed by rank 0 alone
    probs = []
    for run in (one, two):
        capsys.readouterr()
        assert main(["predict", "--adapter", str(run / "adapter"), "--json", "a wonderful film", "awful"]) == 0
        probs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [p["label"] for p in probs[1]] == [p["label"] for p in probs[0]]
    for a, b in zip(probs[0], probs[1], strict=True):
        assert b["confidence"] == pytest.approx(a["confidence"], abs=1e-4)


def test_a_resume_on_another_number_of_processes_is_refused(one_and_two, no_dropout_bert, toy_data, capsys):
    _, two, _ = one_and_two
    args = ddp_args(no_dropout_bert, toy_data, two, "--batch-size", "2", "--grad-accum", "2", "--resume")
    for launch_flags, theirs in (([], "1"), (["--nproc", "3"], "3")):
        capsys.readouterr()
        assert main([*args, *launch_flags]) == 2  # refused before any process starts
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"2 process(es), this one has {theirs}" in err and "--nproc 2" in err


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker with ``RANK=rank`` among the launcher's children."""
    children = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        children += (task / "children").read_text().split()
    for pid in children:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            if f"RANK={rank}".encode() in fh.read().split(b"\0"):
                return int(pid)
    return None


@pytest.mark.skipif(not Path(f"/proc/self/task/{os.getpid()}/children").is_file(), reason="finds ranks in /proc")
def test_a_killed_rank_ends_the_run_with_a_line_naming_it(no_dropout_bert, toy_data, tmp_path):
    run = tmp_path / "killed"
    proc = launch(ddp_args(no_dropout_bert, toy_data, run, "--batch-size", "2", "--epochs", "1000", "--nproc", "2"))
    try:
        while not (run / "metrics.jsonl").is_file() or len(losses(run)) < 3:  # training has started
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "error: rank 1 (pid" in err and "was killed by SIGKILL" in err


def test_the_root_failure_is_the_killed_rank_not_the_one_that_lost_it():
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from loratune.train.distributed import root_failure

    def failure(rank: int, exitcode: int) -> ProcessFailure:
        return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file="")

    lost, killed = failure(0, 1), failure(1, -signal.SIGKILL)  # seen in the same second
    killed.timestamp = lost.timestamp
    assert root_failure({0: lost, 1: killed}) == (1, killed)
    earlier = failure(1, 1)
    earlier.timestamp = lost.timestamp - 1
    assert root_failure({0: lost, 1: earlier}) == (1, earlier)
    assert root_failure({0: lost, 1: failure(1, 1)})[0] == 0
    stopped = failure(0, -signal.SIGTERM)  # torchrun stopped rank 0 after rank 1 was killed
    stopped.timestamp = killed.timestamp
    assert root_failure({0: stopped, 1: killed}) == (1, killed)
    assert root_failure({0: stopped, 1: earlier}) == (1, earlier)


# ------------------------------------------------------------------------------------------ other tasks
def test_token_classification_trains_on_two_processes(no_dropout_bert, tmp_path):
    train, test = toy_conll(tmp_path / "train.conll", 24, 1), toy_conll(tmp_path / "test.conll", 9, 2)
    out = tmp_path / "ner"
    code, _, err = launched(["train", "--task", "token-cls", "--model", str(no_dropout_bert), "--train-file",
                                  str(train), "--eval-file", str(test), "--output", str(out), "--max-length", "32",
                                  "--batch-size", "4", "--precision", "fp32", "--no-progress", "--epochs", "1",
                                  "--val-size", "0", "--nproc", "2"])  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "token-cls" and summary["world_size"] == 2
    assert summary["best"]["num_examples"] == 9  # sentences: batches of 8, then 1, on two ranks
    dist = summary["distributed"]
    assert dist["allreduce_bytes_per_step"] == dist["trainable_grad_bytes"] == 4 * summary["trainable_params"]


def test_compare_runs_a_causal_lm_on_two_processes(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "llama", dtype=torch.float32)
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps(records(40)))
    out = tmp_path / "cmp"
    code = main(["compare", "--methods", "lora", "--task", "causal-lm", "--model", str(model), "--train-file",
                 str(data), "--output", str(out), "--max-length", "48", "--batch-size", "2", "--precision", "fp32",
                 "--no-progress", "--r", "4", "--epochs", "1", "--train-size", "30", "--eval-size", "10",
                 "--nproc", "2"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "lora" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed"]["global_batch_size"] == 4
    assert summary["best"]["tokens"] > 0 and "--nproc 2" in (out / "logs" / "lora.log").read_text()
    assert json.loads((out / "comparison.json").read_text())["methods"]["lora"]["perplexity"] > 0


# ------------------------------------------------------------------------------------------ options
def test_bad_nproc_is_one_line_exit_2(tiny_model_dir, toy_data, tmp_path, capsys, monkeypatch):
    for value, needle in (("0", "must be >= 1"), ("two", "must be an integer")):
        assert main(["train", "--nproc", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--nproc" in err and needle in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")  # the output is checked before any process starts
    assert main(["train", "--model", str(tiny_model_dir), "--dataset", str(toy_data), "--output",
                 str(tmp_path / "full"), "--nproc", "2"]) == 2  # fmt: skip
    assert "exists and is not empty" in capsys.readouterr().err
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "x"),
                        ("MASTER_PORT", "1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main(["train", "--model", str(tiny_model_dir), "--dataset", str(toy_data), "--nproc", "2"]) == 2
    assert "under torchrun drop it" in capsys.readouterr().err


def test_a_process_restarted_by_torchrun_continues_its_run(tmp_path, monkeypatch):
    cfg = build_config(dataset="tweets", output=str(tmp_path / "run"))
    assert restarted(cfg) is cfg
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not restarted(cfg).overwrite  # no folder: a fresh start
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_CONFIG).write_text(json.dumps({"other": 1}))
    assert not restarted(cfg).overwrite  # another run's folder is left alone
    from dataclasses import asdict

    (tmp_path / "run" / RUN_CONFIG).write_text(json.dumps(asdict(cfg)))
    assert restarted(cfg).overwrite  # the failed attempt of this very run, before any checkpoint
    step = tmp_path / "run" / "checkpoints" / "step-000003"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    again = restarted(cfg)
    assert again.resume and not again.overwrite


@pytest.mark.parametrize(
    ("message", "gist"),
    [
        ("[/x/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation to complete",
         "Timed out waiting 3000ms for recv operation to complete"),
        ("Got the following error when running the callback: RuntimeError: [/x/gloo/transport/tcp/pair.cc:537] "
         "Read error [127.0.0.1]:1: Connection reset by peer.", "Read error [127.0.0.1]:1: Connection reset by peer."),
    ],
)  # fmt: skip
def test_a_collective_failure_is_one_line_naming_the_rank(message, gist, monkeypatch):
    from loratune.errors import PeerLost
    from loratune.train import distributed

    calls = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **kw: calls.append(kw["timeout"]))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroyed"))
    for name, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "x"),
                        ("MASTER_PORT", "1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    with pytest.raises(PeerLost) as err, distributed.session(torch.device("cpu"), 45) as parallel:
        assert (parallel.rank, parallel.world_size, parallel.backend) == (1, 2, "gloo")
        raise RuntimeError(message)
    assert str(err.value).startswith(f"rank 1 of 2 lost the other processes ({gist})") and err.value.exit_code == 1
    assert calls == [datetime.timedelta(seconds=45), "destroyed"]
    with pytest.raises(ValueError, match="a bug"), distributed.session(torch.device("cpu"), 45):
        raise ValueError("a bug")  # anything else passes through as it is
