"""Shared fixtures: tiny randomly initialised transformers (2 layers) so tests run in seconds."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import train_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ------------------------------------------------------------------ what a test costs, and the two tiers
# The cost marks (declared in pyproject.toml) are applied here, and nowhere else: by a fixture the test uses,
# or by its name (``file::test``, every parametrization of it). A test with a mark of SLOW (all but ``server``:
# a uvicorn in a thread starts in a moment) is also marked ``slow``: `make test` runs the rest (the fast tier),
# `make test-slow` runs these. tests/test_tiers.py checks that every name below is a test.
COST_BY_FIXTURE = {"shared_data": "real_data", "one_and_two": "ddp", "url": "server"}
COST_BY_TEST: dict[str, tuple[str, ...]] = {
    # the top folder
    "test_cli.py::test_train_all_option_groups_then_eval_and_predict": ("cli_run",),
    "test_cli.py::test_minilm_lora_learns_toy_sentiment": ("cli_run", "real_weights"),
    "test_cli.py::test_full_finetuning_writes_model_and_evaluates": ("cli_run",),
    "test_cli.py::test_padded_baseline_options_count_more_flops": ("cli_run",),
    "test_cli.py::test_recipe_with_flag_override": ("cli_run",),
    "test_cli.py::test_interrupt_and_resume_equals_uninterrupted_run": ("cli_run",),
    "test_cli.py::test_pause_then_resume_runs_the_same_schedule": ("cli_run",),
    "test_cli.py::test_a_second_run_into_a_locked_folder_stops_at_once": ("cli_run", "child_process"),
    "test_cli.py::test_max_length_above_the_model_s_positions_is_clamped_with_a_warning": ("cli_run",),
    "test_cli.py::test_without_a_separate_test_split_the_summary_says_so": ("cli_run",),
    "test_cli.py::test_resume_refuses_changed_options_and_writes_nothing": ("cli_run",),
    "test_cli.py::test_resume_may_raise_max_steps_and_the_schedule_stretches": ("cli_run",),
    "test_cli.py::test_all_linear_run_notes_the_layers_it_targeted": ("cli_run",),
    "test_cli.py::test_loraplus_ratio_survives_pause_and_resume": ("cli_run",),
    "test_compare.py::test_compare_full_vs_lora_each_in_its_own_process": ("cli_run", "child_process"),
    "test_compare.py::test_child_bad_input_is_its_one_line_error_with_exit_2": ("child_process",),
    "test_compare.py::test_rank_sweep_writes_ranks_json_and_png": ("cli_run", "child_process"),
    "test_compare.py::test_auto_rank_picks_a_candidate_trains_it_fully_and_writes_its_evidence": (
        "cli_run",
        "child_process",
    ),
    "test_compare.py::test_ctrl_c_stops_the_child_cleanly_and_says_how_to_resume": ("child_process",),
    "test_pad_id.py::test_training_and_an_artifact_classify_a_padded_row_as_the_unpadded_one": ("cli_run",),
    "test_models.py::test_peft_loads_an_adapter_by_the_hub_id_it_names": ("real_weights",),
    "test_models.py::test_load_minilm_offline": ("real_weights",),
    "test_gpu_check.py::test_script_without_a_gpu_sets_up_then_says_why_it_stops": ("child_process",),
    "test_gpu_check.py::test_standin_minilm_loads_as_minilm": ("real_weights",),
    "test_gpu_check.py::test_cuda_step_builds_each_configuration": ("real_weights",),
    "test_revisions.py::test_train_loads_at_the_revisions_and_records_them_for_eval_and_predict": ("cli_run",),
    "test_revisions.py::test_without_revisions_nothing_is_pinned_or_recorded": ("cli_run",),
    "test_dtypes.py::test_loratune_train_on_a_bf16_checkpoint_saves_fp32_adapters_and_head": ("cli_run",),
    # tasks/
    "tasks/test_causal_lm.py::test_cli_train_eval_predict_generate": ("cli_run",),
    "tasks/test_causal_lm.py::test_compare_sweeps_ranks_by_perplexity_and_infers_the_task": (
        "cli_run",
        "child_process",
    ),
    "tasks/test_causal_lm.py::test_smollm2_loads_offline_by_alias_and_by_hub_id": ("real_weights",),
    "tasks/test_token_cls.py::test_train_eval_predict_on_a_tiny_conll_file": ("cli_run",),
    "tasks/test_token_cls.py::test_full_fine_tuning_of_a_token_classifier": ("cli_run",),
    "tasks/test_token_cls.py::test_loratune_trains_a_token_classifier_step_for_step_like_peft": ("long_run",),
    "tasks/test_token_cls.py::test_shared_conll2003_trains_two_steps": ("cli_run",),
    "tasks/test_token_cls.py::test_compare_infers_token_cls_and_reports_entity_f1": ("cli_run", "child_process"),
    # serve/
    "serve/test_app.py::test_adapters_are_listed_loaded_pinned_and_unloaded": ("server",),
    "serve/test_app.py::test_a_key_protects_loading_and_unloading": ("server",),
    "serve/test_app.py::test_api_key_all_protects_every_route_but_health": ("server",),
    "serve/test_app.py::test_load_test_across_adapters_while_one_is_hot_loaded_and_another_unloaded": ("server",),
    "serve/test_command.py::test_sigterm_lets_the_request_in_flight_finish": ("child_process", "server"),
    # train/
    "train/test_determinism.py::test_loratune_train_deterministic_applies_for_the_run_and_is_in_the_summary": (
        "cli_run",
    ),
    "train/test_distributed.py::test_sharded_evaluation_gathers_every_example_once_on_every_rank": ("ddp",),
    "train/test_distributed.py::test_a_killed_rank_ends_the_run_with_a_line_naming_it": ("ddp", "cli_run"),
    "train/test_distributed.py::test_token_classification_trains_on_two_processes": ("ddp", "cli_run"),
    "train/test_distributed.py::test_compare_runs_a_causal_lm_on_two_processes": ("ddp", "cli_run"),
    "train/test_host_memory.py::test_freed_blocks_are_reused_instead_of_faulted_in_again": ("child_process",),
}
SLOW = {"cli_run", "long_run", "child_process", "ddp", "real_weights", "real_data", "browser"}
TESTS = Path(__file__).resolve().parent


def cost_marks(item: pytest.Item) -> set[str]:
    """The cost marks of ``item``: by the fixtures it uses and by its name."""
    marks = {COST_BY_FIXTURE[name] for name in getattr(item, "fixturenames", ()) if name in COST_BY_FIXTURE}
    name = f"{item.path.relative_to(TESTS).as_posix()}::{getattr(item, 'originalname', item.name)}"
    return marks | set(COST_BY_TEST.get(name, ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by what it costs, and by its tier."""
    for item in items:
        for mark in sorted(cost_marks(item)):
            item.add_marker(mark)
        if SLOW & {mark.name for mark in item.iter_markers()}:
            item.add_marker("slow")


# the encoder size of every tiny BERT-style test model (its vocabulary, positions and labels vary)
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def tiny_bert_cls(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=120,
        **TINY_BERT,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_roberta_cls(num_labels: int = 2, seed: int = 0):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=120,
        **TINY_BERT,
        max_position_embeddings=70,
        num_labels=num_labels,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(cfg).eval()


# a 2-layer Llama with grouped-query attention
TINY_LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip


def tiny_llama_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=120, **TINY_LLAMA)).eval()


def tiny_gpt2_lm(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request) -> int:
    """The process umask set to 022 (then 027) for the test, and restored after it."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 120, (4, 12), generator=g)


# ------------------------------------------------------------------ tiny runnable models and data
POSITIVE = ["good", "great", "fun", "wonderful", "superb", "enjoyable", "brilliant", "lovely"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "horrible", "weak"]
FILLER = ["the", "movie", "was", "really", "and", "plot", "acting", "a", "film", "quite"]


def toy_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) rows whose label a small model can learn from one sentiment word."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 12))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) saved with the packaged MiniLM tokenizer: a real, loadable folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from loratune.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        **TINY_BERT,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(folder)
    return folder


def save_tiny_gpt2(folder, tokenizer_dir):
    """A tiny GPT-2 (Conv1D layers, fan_in_fan_out; lm_head tied to the embeddings) saved in ``folder``
    with the tokenizer of ``tokenizer_dir``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=1, eos_token_id=2)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_llama(folder: Path, dtype: torch.dtype = torch.bfloat16, pad_token: str | None = "<pad>") -> Path:
    """A 2-layer Llama language model (as hub checkpoints come) stored in ``dtype``, with a word-level
    tokenizer over the toy words; ``pad_token`` "<pad>" is a token of its own, None leaves the pad unset."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *FILLER, *POSITIVE, *NEGATIVE])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=pad_token
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), **TINY_LLAMA, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_bf16_dir(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint stored in bf16, as Llama, Qwen and Gemma checkpoints are on the hub."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-bf16"))


@pytest.fixture(scope="session")
def tiny_bert_bf16_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """``tiny_model_dir``'s BERT and tokenizer, stored in bf16."""
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-bf16")
    BertModel.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A folder with train.csv (96 rows) and test.csv (32 rows)."""
    folder = tmp_path_factory.mktemp("toy-data")
    write_csv(folder / "train.csv", toy_rows(96, seed=1))
    write_csv(folder / "test.csv", toy_rows(32, seed=2))
    return folder


@dataclass(frozen=True)
class TrainedRun:
    """A finished run folder, read-only (copy it to change it), and the warnings its training raised."""

    folder: Path
    train_warnings: list[warnings.WarningMessage]

    @property
    def adapter(self) -> Path:
        return self.folder / "adapter"


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, toy_data, tmp_path_factory) -> TrainedRun:
    """One LoRA run of the tiny BERT on ``toy_data`` (the tiny run's flags, one epoch), trained once for the
    eval, predict, merge and bad-input tests."""
    from loratune.cli import main

    folder = tmp_path_factory.mktemp("trained") / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(train_args(tiny_model_dir, toy_data, folder, "--epochs", "1")) == 0
    return TrainedRun(folder, caught)


_HOLD_LOCK = """
import sys, time
from loratune.fsutil import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path):
    """Another process holds ``folder``'s run lock until the block ends; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ adapters for the serving tests
TEXTS = ["the movie was great", "awful plot and dull acting", "Alice met Bob in Paris .", "a"]
ADAPTERS = {  # name: (task, labels, r, targets)
    "sent": ("seq-cls", ["negative", "positive"], 4, ["query", "value"]),
    "topic": ("seq-cls", ["sport", "news", "art"], 2, ["key", "dense"]),
    "ner": ("token-cls", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], 3, ["query", "value"]),
}


def make_adapter(
    folder: Path,
    base: Path,
    task: str,
    labels: list[str],
    r: int,
    targets: list[str],
    seed: int,
    head: str = "classifier",
) -> Path:
    """A random (non-zero) LoRA adapter with its head, saved as a run's ``adapter/`` folder."""
    from loratune.artifacts import base_fingerprint
    from loratune.lora import LoraConfig, add_lora, save_adapter
    from loratune.models import load_tokenizer
    from loratune.tasks import get_task

    net = get_task(task).load_model(str(base), {"labels": labels})
    torch.manual_seed(seed)
    config = LoraConfig(r=r, target_modules=targets, modules_to_save=[head], init_lora_weights=False,
                        task_type=get_task(task).peft_task_type)  # fmt: skip
    add_lora(net, config, "default")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "modules_to_save" in name:
                p.normal_(0, 0.5)
    save_adapter(net, folder)
    load_tokenizer(str(base)).save_pretrained(folder)
    info = {"task": task, "labels": labels, "base_model": str(base), "base_model_fingerprint": base_fingerprint(net),
            "max_length": 32}  # fmt: skip
    (folder / "loratune.json").write_text(json.dumps(info))
    return folder


def assert_close(got: dict, want: dict) -> None:
    """Records equal, their floats within 1e-5."""
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], float):
            assert got[key] == pytest.approx(want[key], abs=1e-5), key
        elif isinstance(want[key], dict):
            assert_close(got[key], want[key])
        elif isinstance(want[key], list) and want[key] and isinstance(want[key][0], dict):
            assert len(got[key]) == len(want[key])
            for g, w in zip(got[key], want[key], strict=True):
                assert_close(g, w)
        else:
            assert got[key] == want[key], key


@contextlib.contextmanager
def serving(app):
    """``app`` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    import threading

    import uvicorn

    # Keep-alive far above httpx's 5 s pool expiry (uvicorn's default is also 5 s): with client and server in
    # one process, a busy GIL can delay the server's loop until it closes a connection the client just reused.
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_keep_alive=60)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lm_registry(reg: Path, base: Path) -> Path:
    """A registry of two random causal-lm adapters on ``base`` (plain prompts): ``chat`` (r=4 on
    q_proj, v_proj) and ``poet`` (r=2 on o_proj)."""
    from loratune.artifacts import base_fingerprint
    from loratune.lora import LoraConfig, add_lora, save_adapter
    from loratune.models import load_tokenizer
    from loratune.tasks import get_task

    for seed, (name, r, targets) in enumerate([("chat", 4, ["q_proj", "v_proj"]), ("poet", 2, ["o_proj"])]):
        net = get_task("causal-lm").load_model(str(base), {})
        torch.manual_seed(seed)
        add_lora(net, LoraConfig(r=r, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"))
        folder = reg / name / "adapter"
        save_adapter(net, folder)
        load_tokenizer(str(base)).save_pretrained(folder)
        info = {"task": "causal-lm", "labels": None, "base_model": str(base), "base_model_fingerprint":
                base_fingerprint(net), "max_length": 32, "data_format": "text", "prompt_format": "plain"}  # fmt: skip
        (folder / "loratune.json").write_text(json.dumps(info))
    return reg
