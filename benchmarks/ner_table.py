"""The table of `benchmarks/tasks.sh ner-sets`: test entity F1 per NER set and setting.

Reads ``RUNS/<set>/<setting>/summary.json`` (a `loratune train` run) and ``RUNS/<set>/peft-*.json``
(`ner_parity.py --engine peft`), and prints one Markdown table: a row per setting, a column per set, each cell the
test F1 (and, for runs through the CLI, the validation F1 that chose the kept checkpoint, and the train time).

Usage: ``.venv/bin/python benchmarks/ner_table.py runs/bench-ner-sets``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cells(root: Path) -> dict[str, dict[str, str]]:
    """setting -> set -> cell text."""
    table: dict[str, dict[str, str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for run in sorted(folder.iterdir()):
            if (run / "summary.json").is_file():
                s = json.loads((run / "summary.json").read_text())
                best = (s.get("best") or {}).get("f1", float("nan"))
                text = f"{s['test']['f1']:.3f} (val {best:.3f}, {s['train_seconds']:.0f} s)"
                if s.get("warning"):
                    text += " *"
                table.setdefault(run.name, {})[folder.name] = text
            elif run.suffix == ".json":
                r = json.loads(run.read_text())
                val = r["epochs"][-1]["f1"]
                table.setdefault(f"PEFT {run.stem.removeprefix('peft-')}", {})[folder.name] = (
                    f"{r['test']['f1']:.3f} (val {val:.3f}, {r['seconds']:.0f} s)"
                )
    return table


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-ner-sets")
    table = cells(root)
    sets = sorted({s for row in table.values() for s in row})
    print("| setting | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(row.get(s, "") for s in sets) + " |")
    print("\n* every validation F1 of the run was 0.0 (the run printed its warning)")


if __name__ == "__main__":
    main()
