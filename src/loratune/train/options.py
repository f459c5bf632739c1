"""The options of ``loratune train`` (also passed through by ``loratune compare``), as argparse groups.

Each flag's ``dest`` is a ``RunConfig`` field; unset flags stay None so a recipe can fill them.
"""

from __future__ import annotations

import argparse

from loratune.train.config import KERNELS, METHODS, PADDINGS, PRECISIONS


def add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags of `train` (and `compare`); every default is None so that a recipe can set it."""
    data = p.add_argument_group("model and data")
    data.add_argument("--config", help="YAML recipe (see recipes/); flags override it")
    data.add_argument("--model", help="hub name, local folder, or alias 'minilm' (default)")
    data.add_argument("--dataset", help="'tweets' (default), a hub dataset (imdb, glue/sst2), a file or a folder")
    data.add_argument("--train-file", help="local train file (csv, tsv, json, jsonl, parquet)")
    data.add_argument("--eval-file", help="local eval file; without one, an eval split is held out")
    data.add_argument("--text-column", help="text column (default: auto-detected)")
    data.add_argument("--label-column", help="label column (default: auto-detected)")
    data.add_argument("--train-size", type=int, help="subsample the train split to N examples (seeded)")
    data.add_argument("--eval-size", type=int, help="subsample the eval split to N examples (seeded)")
    data.add_argument("--max-length", type=int, help="truncate to N tokens")
    lora = p.add_argument_group("method and LoRA")
    lora.add_argument("--method", choices=METHODS, help="lora (default) or full fine-tuning")
    lora.add_argument("--r", type=int, help="LoRA rank (default 8)")
    lora.add_argument("--alpha", type=float, help="LoRA alpha (default 32)")
    lora.add_argument("--dropout", type=float, help="LoRA dropout (default 0.1)")
    lora.add_argument("--target-modules", help="comma-separated names, a regex, or all-linear")
    lora.add_argument("--rslora", action="store_true", default=None, help="scale by alpha/sqrt(r)")
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    opt.add_argument(
        "--pause-at-step",
        type=int,
        help="stop at optimizer step N with a checkpoint and an evaluation, the schedule unchanged; "
        "continue with --resume (and a later or no --pause-at-step)",
    )
    opt.add_argument("--batch-size", type=int)
    opt.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    opt.add_argument("--lr", type=float, help="learning rate (default 5e-4 LoRA, 2e-5 full)")
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--warmup-ratio", type=float)
    opt.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 1.0)")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--precision", choices=PRECISIONS)
    opt.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    opt.add_argument("--gradient-checkpointing", action="store_true", default=None)
    opt.add_argument(
        "--padding",
        choices=PADDINGS,
        help="longest (default): pad each batch to its longest text; max_length: pad all to --max-length",
    )
    opt.add_argument(
        "--pad-to-multiple-of",
        type=int,
        help="round each batch's length up to a multiple of N (default 16; 1: exact): fewer distinct shapes",
    )
    opt.add_argument(
        "--no-group-by-length",
        dest="group_by_length",
        action="store_const",
        const=False,
        default=None,
        help="random batches instead of batches of similar lengths",
    )
    opt.add_argument(
        "--kernels",
        choices=KERNELS,
        help="lean (default): loratune's attention and dropout kernels, same maths, less memory and time; "
        "torch: the model's own",
    )
    opt.add_argument("--trust-remote-code", action="store_true", default=None, help="run the model's own code")
    run = p.add_argument_group("run")
    run.add_argument("--output", help="run folder (default runs/demo)")
    run.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint")
    run.add_argument("--overwrite", action="store_true", default=None, help="replace a non-empty --output")
    run.add_argument("--eval-every", type=int, help="also evaluate every N steps")
    run.add_argument("--save-every", type=int, help="also checkpoint every N steps")
    run.add_argument("--early-stopping-patience", type=int, help="stop after N evaluations without gain")
    run.add_argument("--log-every", type=int)
    run.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None)
