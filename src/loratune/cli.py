"""The ``loratune`` command: train, eval, predict.

User errors (``LoratuneError``) print one line ``error: ...`` and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from loratune.errors import Interrupted, LoratuneError
from loratune.train.options import add_train_options

DEFAULTS_NOTE = "defaults: the offline demo (--model minilm --dataset tweets)"


# ------------------------------------------------------------------------------------------ parser
def _inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="the adapter/ (or model/) folder of a run")
    p.add_argument("--model", help="base model (default: the one the adapter names)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, help="default: the length the adapter was trained with")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trust-remote-code", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loratune", description="LoRA fine-tuning of pretrained transformers.")
    parser.add_argument("--version", action="version", version=f"loratune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="fine-tune a model (LoRA or full)", description=DEFAULTS_NOTE)
    add_train_options(train)
    ev = sub.add_parser("eval", help="evaluate an adapter: metrics and confusion matrix")
    _inference_options(ev)
    ev.add_argument("--dataset", help="default: the data the adapter was trained on")
    ev.add_argument("--eval-file", help="a labelled file to evaluate on")
    ev.add_argument("--text-column")
    ev.add_argument("--label-column")
    ev.add_argument("--eval-size", type=int)
    pr = sub.add_parser("predict", help="label texts with an adapter")
    _inference_options(pr)
    pr.add_argument("texts", nargs="*", help="texts to label")
    pr.add_argument("--file", help="a file with one text per line ('-' for stdin)")
    cmp = sub.add_parser(
        "compare",
        help="measure full fine-tuning vs LoRA, sweep ranks, pick a rank",
        description="Each run is its own process; outputs in --output (default runs/compare). " + DEFAULTS_NOTE,
    )
    add_train_options(cmp)
    group = cmp.add_argument_group("compare")
    group.add_argument("--methods", help="comma-separated methods, each its own run (default full,lora)")
    group.add_argument("--ranks", help="comma-separated LoRA ranks: one run per rank (ranks.json, ranks.png)")
    group.add_argument(
        "--auto-rank",
        action="store_true",
        help="pick the smallest rank within --tolerance of the best by successive halving over --ranks "
        "(default 1,2,4,8,16), then train it fully into OUT/auto-rank",
    )
    group.add_argument("--tolerance", type=float, default=0.5, help="auto-rank: accuracy points (default 0.5)")
    group.add_argument(
        "--first-budget",
        type=float,
        default=1 / 16,
        help="auto-rank: the first round's steps as a fraction of a full run (default 1/16); doubled each round",
    )
    return parser


def _version() -> str:
    from loratune import __version__

    return __version__


# ------------------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace) -> int:
    from loratune.train.config import build_config
    from loratune.train.run import run_training

    options = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func")}
    cfg = build_config(args.config, **options)
    summary = run_training(cfg)
    print(format_summary(summary))
    return 0


def format_summary(s: dict[str, Any]) -> str:
    from loratune.train.memory import format_bytes

    best, final = s.get("best") or {}, s.get("final") or {}
    rows = [
        ("run", s["title"]),
        ("examples", f"{s['train_examples']} train / {s['eval_examples']} eval"),
        ("accuracy (best)", f"{best.get('accuracy', float('nan')):.4f}  at epoch {best.get('epoch')}"),
        ("macro-F1 (best)", f"{best.get('macro_f1', float('nan')):.4f}"),
        ("accuracy (final)", f"{final.get('accuracy', float('nan')):.4f}"),
        (
            "trainable params",
            f"{s['trainable_params']:,} of {s['total_params']:,} ({s['trainable_percent']:.2f} %)",
        ),
        (
            "train time",
            f"{s['train_seconds']:.1f} s ({s['examples_per_s']:.1f} examples/s), wall {s['wall_seconds']:.1f} s",
        ),
        ("peak memory", format_bytes(s["peak_memory_bytes"])),
        ("precision / device", f"{s['precision']} / {s['device']}"),
        ("artifact", f"{s['artifact']} ({format_bytes(s['weights_bytes'])} of weights)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _load(args: argparse.Namespace):
    from loratune.artifacts import load_artifact
    from loratune.train.precision import resolve_device

    device = resolve_device(args.device)
    return load_artifact(args.adapter, model=args.model, device=device, trust_remote_code=args.trust_remote_code)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from loratune.data.sources import load_text_classification
    from loratune.errors import DataError
    from loratune.tasks.seq_cls import classification_metrics, format_confusion_matrix, predict_proba

    loaded = _load(args)
    recorded = loaded.info.get("data") or {}
    if args.eval_file:
        data = load_text_classification(
            train_file=args.eval_file,
            eval_file=args.eval_file,
            text_column=args.text_column,
            label_column=args.label_column,
        )
        source = args.eval_file
    else:
        dataset = args.dataset or recorded.get("dataset")
        same = args.dataset is None
        if dataset is None and not (same and recorded.get("train_file")):
            raise DataError("no data to evaluate on; pass --dataset NAME or --eval-file PATH")
        data = load_text_classification(
            dataset,
            train_file=recorded.get("train_file") if same else None,
            eval_file=recorded.get("eval_file") if same else None,
            text_column=args.text_column or (recorded.get("text_column") if same else None),
            label_column=args.label_column or (recorded.get("label_column") if same else None),
            train_size=recorded.get("train_size") if same else None,
            eval_size=args.eval_size or (recorded.get("eval_size") if same else None),
            seed=recorded.get("seed", 42) if same else 42,
        )
        source = data.source
    labels = loaded.labels
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        raise DataError(
            f"the eval data has labels the adapter does not know: {', '.join(unknown)} "
            f"(it knows {', '.join(labels)}); pass data with the same label names"
        )
    remap = torch.tensor([labels.index(name) for name in data.labels])
    gold = remap[torch.tensor(data.eval["label"])]
    max_length = args.max_length or loaded.info.get("max_length", 256)
    probs = predict_proba(
        loaded.model, loaded.tokenizer, data.eval["text"], max_length=max_length, batch_size=args.batch_size
    )
    metrics = classification_metrics(probs, gold, len(labels))
    if args.json:
        print(json.dumps({"adapter": str(args.adapter), "data": source, "labels": labels, **metrics}))
    else:
        print(f"adapter   {args.adapter}\ndata      {source} ({metrics['num_examples']} examples)")
        print(f"accuracy  {metrics['accuracy']:.4f}\nmacro-F1  {metrics['macro_f1']:.4f}\n")
        print(format_confusion_matrix(metrics["confusion_matrix"], labels))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from loratune.errors import DataError
    from loratune.tasks.seq_cls import format_prediction, predict_proba, prediction_dict

    texts = list(args.texts)
    if args.file:
        try:
            stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="replace")  # noqa: SIM115
            with stream:
                texts += [line.rstrip("\n") for line in stream if line.strip()]
        except OSError as err:
            raise DataError(f"cannot read --file {args.file} ({err.strerror}); pass a readable text file") from None
    if not texts:
        raise DataError('nothing to predict; pass texts as arguments ("a great film") or --file PATH')
    loaded = _load(args)
    max_length = args.max_length or loaded.info.get("max_length", 256)
    probs = predict_proba(loaded.model, loaded.tokenizer, texts, max_length=max_length, batch_size=args.batch_size)
    for text, p in zip(texts, probs, strict=True):
        if args.json:
            print(json.dumps(prediction_dict(text, p, loaded.labels)))
        else:
            print(format_prediction(text, p, loaded.labels))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loratune.compare import run_compare

    return run_compare(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "compare": cmd_compare}


def _quiet_libraries() -> None:
    """Keep the console for loratune's own output and for download progress.

    Library warnings and the per-item processing bars are off: datasets' own bars (map, "Tokenising",
    split generation) and transformers' (per-tensor "Loading weights"). huggingface_hub's download bars,
    which model and dataset downloads both use, stay on.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    from loratune.models import empty_tqdm

    transformers.logging.set_verbosity_error()
    if hasattr(transformers.logging, "set_tqdm_hook"):  # absent in older transformers
        transformers.logging.set_tqdm_hook(empty_tqdm)
    datasets.disable_progress_bars()  # datasets' bars only; huggingface_hub's are separate
    datasets.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _quiet_libraries()
        return COMMANDS[args.command](args)
    except Interrupted as err:  # a clean stop with a checkpoint, not an error
        print(f"\n{err}", file=sys.stderr)
        return err.exit_code
    except LoratuneError as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
