"""The ``loratune`` command: train, eval, predict, generate, merge, compare, serve, inspect.

User errors (``LoratuneError`` and bad flags) print one line ``error: ...`` and exit with code 2,
no traceback.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from loratune.errors import Interrupted, LoratuneError
from loratune.fsutil import check_keeps, os_error_code
from loratune.generate import DEFAULT_NEW_TOKENS
from loratune.serve.command import add_serve_options
from loratune.train.options import add_train_options, source_paths

if TYPE_CHECKING:
    from loratune.artifacts import Loaded

DEFAULTS_NOTE = "defaults: the offline demo (--model minilm --dataset tweets)"
ENCODING_HELP = "the text encoding of the {what}, e.g. latin-1 (default: UTF-8, bad bytes replaced with a warning)"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the fix instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


# ------------------------------------------------------------------------------------------ parser
def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low`` (argparse names the flag in its error)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return integer


def finite(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def text_encoding(text: str) -> str:
    """An argparse type: the name of a text encoding Python knows."""
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(
            f"unknown encoding {text!r}; pass one such as utf-8, latin-1 or cp1252"
        ) from None
    return text


def _inference_options(p: argparse.ArgumentParser, *, task: bool = True) -> None:
    p.add_argument("--adapter", help="the adapter/ (or model/) folder of a run; without it, --model alone")
    p.add_argument("--model", help="base model (default: the one the adapter names); alone: the base model itself")
    if task:
        p.add_argument("--task", help="with --model and no --adapter: the task (default causal-lm)")
    p.add_argument("--revision", help="the base model's hub revision (default: the one it was trained at)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument(
        "--max-length",
        type=at_least(1),
        help="default: the length the adapter was trained with (at most the model's positions)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--trust-remote-code", action="store_true")


def _compare_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("compare")
    group.add_argument("--methods", help="comma-separated methods, each its own run (default full,lora)")
    group.add_argument("--ranks", help="comma-separated LoRA ranks: one run per rank (ranks.json, ranks.png)")
    group.add_argument(
        "--auto-rank",
        action="store_true",
        help="pick the smallest rank within --tolerance of the best by successive halving over --ranks "
        "(default 1,2,4,8,16), then train it fully into OUT/auto-rank",
    )
    group.add_argument(
        "--tolerance",
        type=finite,
        default=0.5,
        help="auto-rank: points of the task's metric: percent points for accuracy or F1, "
        "its own units for perplexity (default 0.5)",
    )
    group.add_argument(
        "--first-budget",
        type=finite,
        default=1 / 16,
        help="auto-rank: the first round's steps as a fraction of a full run (default 1/16); doubled each round",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loratune", description="LoRA fine-tuning of pretrained transformers.")
    parser.add_argument("--version", action="version", version=f"loratune {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="fine-tune a model (LoRA or full)", description=DEFAULTS_NOTE)
    add_train_options(train)
    _nproc_option(
        train,
        "train in N processes on this machine (data parallel, started by torchrun; "
        "for several machines run torchrun -m loratune train on each)",
    )
    ev = sub.add_parser("eval", help="evaluate an adapter: metrics and confusion matrix")
    _inference_options(ev)
    ev.add_argument("--dataset", help="default: the data the adapter was trained on")
    ev.add_argument("--eval-file", help="a labelled file to evaluate on")
    ev.add_argument("--text-column")
    ev.add_argument("--label-column")
    ev.add_argument("--eval-size", type=at_least(1))
    ev.add_argument(
        "--train-size", type=at_least(1), help="causal-lm with one file: the eval records follow the first N"
    )
    ev.add_argument("--encoding", type=text_encoding, help=ENCODING_HELP.format(what="data files"))
    pr = sub.add_parser("predict", help="label texts with an adapter")
    _inference_options(pr)
    pr.add_argument("texts", nargs="*", help="texts to label")
    pr.add_argument("--file", help="a file with one text per line ('-' for stdin); --json records carry its line")
    pr.add_argument("--encoding", type=text_encoding, help=ENCODING_HELP.format(what="--file"))
    gen = sub.add_parser("generate", help="generate text with a causal-lm adapter or a base model")
    _inference_options(gen, task=False)
    gen.add_argument("prompt", nargs="?", help="the prompt (an instruction, formatted as training formatted them)")
    gen.add_argument("--chat", action="store_true", help="an interactive session on stdin: /exit or EOF ends it")
    gen.add_argument("--raw", action="store_true", help="send the prompt as it is, with no chat or Alpaca template")
    gen.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS, help="default %(default)s")
    gen.add_argument("--temperature", type=finite, default=0.0, help="0 (the default): greedy; above: sampling")
    gen.add_argument("--top-p", type=finite, default=1.0, help="sample from the top-p nucleus, in (0, 1] (default 1)")
    gen.add_argument("--seed", type=int, help="seed of the sampling: the same seed gives the same text")
    _merge_options(sub)
    cmp = sub.add_parser(
        "compare",
        help="measure full fine-tuning vs LoRA, sweep ranks, pick a rank",
        description="Each run is its own process; outputs in --output (default runs/compare). " + DEFAULTS_NOTE,
    )
    add_train_options(cmp)
    _compare_options(cmp)
    _nproc_option(cmp, "train each run in N processes (loratune train --nproc N)")
    add_serve_options(
        sub.add_parser(
            "serve",
            help="serve a folder of adapters on one base model over HTTP (API, playground page, metrics)",
            description="One base model in memory, the adapters of --adapters on it, swapped and mixed per request.",
        )
    )
    _inspect_options(sub.add_parser("inspect", help="a model's linear layers and each task's default LoRA targets"))
    return parser


def _nproc_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--nproc", type=at_least(1), metavar="N", help=help_text + " (default 1)")


def _merge_options(sub: Any) -> None:
    mg = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model: a plain transformers model",
        description="Writes save_pretrained's files (safetensors), the tokenizer and loratune.json to --output: "
        "AutoModelFor<Task>.from_pretrained(OUTPUT) loads it without loratune.",
    )
    mg.add_argument("--adapter", required=True, help="the adapter/ folder of a LoRA run")
    mg.add_argument("--output", required=True, help="the folder to write (must not exist, or be empty)")
    mg.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        help="the saved weights' dtype (default: the base model's stored dtype, else fp32); "
        "the merge itself runs in fp32",
    )
    mg.add_argument("--overwrite", action="store_true", help="replace an --output folder that is not empty")
    mg.add_argument("--model", help="base model (default: the one the adapter names)")
    mg.add_argument("--revision", help="the base model's hub revision (default: the one it was trained at)")
    mg.add_argument("--trust-remote-code", action="store_true")


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm", help="hub name, local folder, or alias 'minilm' (default minilm)")
    p.add_argument("--revision", help="the hub model's branch, tag or commit (default: its latest)")
    p.add_argument("--r", type=at_least(1), default=8, help="the LoRA rank to count parameters for (default 8)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model's own code from the hub")


def _version() -> str:
    from loratune import __version__

    return __version__


# ------------------------------------------------------------------------------------------ commands
def train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunConfig`` fields that ``args`` sets (``--config`` and the command's own flags left out)."""
    from loratune.train.config import options

    return {k: v for k, v in vars(args).items() if k in options()}


def cmd_train(args: argparse.Namespace) -> int:
    from loratune.host_memory import keep_freed_memory
    from loratune.tasks import get_task
    from loratune.train.config import build_config
    from loratune.train.run import run_training

    cfg = build_config(args.config, **train_flags(args))
    if cfg.overwrite:
        check_keeps(cfg.output, source_paths(cfg, args.config))
    if args.nproc is not None:
        code = launch_train(args, cfg)
        if code is not None:
            return code
    if cfg.malloc_tuning:
        keep_freed_memory()  # process-wide, so here at the command's start and not in a library call
    summary = run_training(cfg)
    if os.environ.get("RANK", "0") == "0":  # a distributed run's other ranks print nothing
        print(format_summary(summary, get_task(cfg.task).summary_metrics))
    return 0


def launch_train(args: argparse.Namespace, cfg) -> int | None:
    """``train --nproc N``: check the output folder, then run the same command in N processes through
    torchrun's launcher and return its exit code; None for one process (train here)."""
    from loratune.train.config import as_flags
    from loratune.train.distributed import launch, launched
    from loratune.train.run_folder import check_output_dir, check_resume

    if launched() is not None:
        raise LoratuneError(
            "--nproc starts torchrun itself; under torchrun drop it (torchrun's --nproc-per-node sets the processes)"
        )
    if args.nproc == 1:
        return None
    out = check_output_dir(cfg)
    if cfg.resume:
        check_resume(cfg, out, args.nproc)
    given = {k: v for k, v in train_flags(args).items() if v is not None}
    recipe = ["--config", args.config] if args.config else []
    return launch(args.nproc, ["train", *recipe, *as_flags({**given, "task": cfg.task})])


def format_summary(s: dict[str, Any], metrics: Sequence[str]) -> str:
    """The end-of-run summary as aligned lines; ``metrics``: the task's metrics to show."""
    from loratune.train.memory import format_bytes

    best, final = s.get("best") or {}, s.get("final") or {}
    metric = s["metric"]
    shown = list(dict.fromkeys([metric, *metrics]))
    val = f" / {s['val_examples']} validation" if s.get("val_examples") else ""
    rows = [("run", s["title"]), ("examples", f"{s['train_examples']} train{val} / {s['eval_examples']} eval")]
    label = {"macro_f1": "macro-F1"}
    rows += [
        (
            f"{label.get(name, name)} (best)",
            f"{best.get(name, float('nan')):.4f}" + (f"  at epoch {best.get('epoch')}" if i == 0 else ""),
        )
        for i, name in enumerate(shown)
    ]
    test = s.get("test") or {}
    rows += [(f"{label.get(name, name)} (test)", f"{test[name]:.4f}") for name in shown if name in test]
    rows += [
        ("best chosen on", s.get("selection") or "the eval split"),
        (f"{metric} (final)", f"{final.get(metric, float('nan')):.4f}"),
        ("trainable params", f"{s['trainable_params']:,} of {s['total_params']:,} ({s['trainable_percent']:.2f} %)"),
        (
            "train time",
            f"{s['train_seconds']:.1f} s ({s['examples_per_s']:.1f} examples/s), wall {s['wall_seconds']:.1f} s",
        ),
        ("peak memory", format_bytes(s["peak_memory_bytes"])),
        ("precision / device", f"{s['precision']} / {s['device']}"),
        ("artifact", f"{s['artifact']} ({format_bytes(s['weights_bytes'])} of weights)"),
    ]
    width = max(len(k) for k, _ in rows)
    warning = [f"warning: {s['warning']}"] if s.get("warning") else []
    return "\n".join([*(f"{k.ljust(width)}  {v}" for k, v in rows), *warning])


def _load(args: argparse.Namespace, task: str | None = None):
    """The artifact of --adapter; without one, the --model base model for --task (default causal-lm)."""
    from loratune.artifacts import load_artifact, load_base_model
    from loratune.device import resolve_device
    from loratune.tasks import get_task

    device = resolve_device(args.device)
    if args.adapter is None:
        if not args.model:
            raise LoratuneError("no model given; pass --adapter DIR (a run's adapter/ folder) or --model NAME")
        base_task = get_task(task or getattr(args, "task", None) or "causal-lm")
        return load_base_model(
            args.model, base_task, device=device, trust_remote_code=args.trust_remote_code, revision=args.revision
        )
    if getattr(args, "task", None):
        raise LoratuneError("--task is for a base model (--model without --adapter); an adapter knows its task")
    return load_artifact(
        args.adapter, model=args.model, device=device, trust_remote_code=args.trust_remote_code, revision=args.revision
    )


def _max_length(args: argparse.Namespace, loaded: Loaded) -> int:
    """--max-length, refused above the model's positions; by default the adapter's, at most those positions."""
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if args.max_length is not None:
        if positions and args.max_length > positions:
            raise LoratuneError(
                f"--max-length {args.max_length} is more than the {positions} positions of the model "
                f"(max_position_embeddings); pass --max-length {positions} or less"
            )
        return args.max_length
    default = loaded.info.get("max_length", 256)
    return min(default, positions) if positions else default


def _eval_data(args: argparse.Namespace, task, info: dict[str, Any]):
    """The data ``eval`` scores: --eval-file, --dataset, or the data the artifact was trained on."""
    from loratune.data.options import DataOptions
    from loratune.errors import DataError

    given = {"text_column": args.text_column, "label_column": args.label_column, "encoding": args.encoding}
    if args.eval_file and args.dataset is not None:
        raise DataError("both --dataset and --eval-file were given; pass one of them")
    if args.eval_file:
        options = DataOptions(train_file=args.eval_file, eval_file=args.eval_file, eval_size=args.eval_size, **given)
    elif args.dataset is not None:  # another dataset: only the column, encoding and size options carry over
        options = DataOptions(args.dataset, eval_size=args.eval_size, train_size=args.train_size, **given)
    else:
        recorded = dict(info.get("data") or {})
        if recorded.get("dataset") is None and not recorded.get("train_file"):
            raise DataError("no data to evaluate on; pass --dataset NAME or --eval-file PATH")
        given.update(eval_size=args.eval_size, train_size=args.train_size)
        options = DataOptions.from_record(recorded, **{k: v for k, v in given.items() if v is not None})
    return task.load_eval_data(options.replace(val_size=0, for_eval=True), info)


def cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from loratune.data.batching import LengthGroupedBatchSampler
    from loratune.tasks import get_task
    from loratune.train.evaluate import evaluate

    loaded = _load(args)
    task = get_task(loaded.info.get("task", "seq-cls"))
    max_length = _max_length(args, loaded)
    data = _eval_data(args, task, loaded.info)
    tokens = task.tokenize(data.eval, loaded.tokenizer, max_length)
    collate = task.collator(loaded.tokenizer, max_length=None, pad_to_multiple_of=None)
    sampler = LengthGroupedBatchSampler(tokens["length"], args.batch_size, shuffle=False)
    loader = DataLoader(tokens, batch_sampler=sampler, collate_fn=collate)
    device = next(loaded.model.parameters()).device
    metrics = evaluate(loaded.model, loader, task.metrics(data), device=device, precision="fp32")
    if args.json:
        record = {
            "adapter": str(args.adapter) if args.adapter else None,
            "model": loaded.info.get("base_model"),
            "data": data.source,
            "labels": loaded.info.get("labels"),
            **metrics,
        }
        print(json.dumps(record))
    else:
        shown = f"adapter   {args.adapter}" if args.adapter else f"model     {args.model} (no adapter)"
        print(f"{shown}\ndata      {data.source} ({len(data.eval)} examples)")
        print(task.format_report(metrics, loaded.info))
    return 0


def _file_lines(name: str, encoding: str | None) -> list[str]:
    """The lines of --file (``-``: stdin) decoded as ``encoding``, blank ones too, without their line ends."""
    from loratune.data.readers import text_errors
    from loratune.errors import DataError

    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read --file {name} ({err.strerror}); pass a readable text file") from None
    errors = text_errors("stdin" if name == "-" else name, [data], encoding)
    text = data.decode(encoding or "utf-8", errors=errors).replace("\r\n", "\n")
    return text.removesuffix("\n").split("\n") if text else []


def utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (an argument with invalid bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_texts(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """The texts to label as ``(where, line, text)``: ``line`` is a text's position among the arguments,
    or its line in --file; ``where`` names it for a message. Empty and blank texts are kept."""
    from loratune.errors import DataError

    texts = [(f"text argument {n}", n, text) for n, text in enumerate(args.texts, 1)]
    for where, _, text in texts:
        if not text.isascii() and not utf8(text):
            raise DataError(f"{where} is not valid UTF-8; pass UTF-8 text, or put it in a --file with its --encoding")
    if args.file:
        name = "stdin" if args.file == "-" else args.file
        texts += [(f"line {n} of {name}", n, text) for n, text in enumerate(_file_lines(args.file, args.encoding), 1)]
    if not texts:
        raise DataError('nothing to predict; pass texts as arguments ("a great film") or --file PATH')
    return texts


def cmd_predict(args: argparse.Namespace) -> int:
    from loratune.tasks import get_task

    numbered = read_texts(args)
    loaded = _load(args)
    task = get_task(loaded.info.get("task", "seq-cls"))
    max_length = _max_length(args, loaded)
    for where, _, text in numbered:
        if not text.strip():
            print(f"warning: {where} is empty; its prediction is for an empty text", file=sys.stderr)
    texts = [text for _, _, text in numbered]
    records = task.predict(
        loaded.model, loaded.tokenizer, texts, loaded.info, max_length=max_length, batch_size=args.batch_size
    )
    for (_, line, _), record in zip(numbered, records, strict=True):
        print(json.dumps({"line": line, **record}) if args.json else task.format_prediction(record))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loratune.compare import run_compare

    return run_compare(args, train_flags(args))


def cmd_inspect(args: argparse.Namespace) -> int:
    from loratune.inspect_model import as_json, format_inspection, inspect_model

    report = inspect_model(args.model, args.r, revision=args.revision, trust_remote_code=args.trust_remote_code)
    print(as_json(report) if args.json else format_inspection(report))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from loratune.generate import GenerationOptions, chat, complete, positions, prompt_format

    options = GenerationOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed).check()
    if args.chat == (args.prompt is not None):
        raise LoratuneError('pass a prompt ("Name three colours.") or --chat, one of them')
    loaded = _load(args, task="causal-lm")
    if loaded.info.get("task") != "causal-lm":
        raise LoratuneError(f"{args.adapter} is a {loaded.info.get('task')} adapter; generate needs a causal-lm one")
    fmt = prompt_format(loaded.info, loaded.tokenizer, raw=args.raw)
    context = args.max_length or positions(loaded.model) or 2048
    max_prompt = context if args.max_length else context - options.max_new_tokens
    if args.chat:
        mark = sys.stderr if sys.stdin.isatty() else None
        chat(
            loaded.model,
            loaded.tokenizer,
            fmt,
            options,
            sys.stdin,
            max_prompt=max_prompt,
            out=sys.stdout,
            prompt_mark=mark,
        )
    else:
        complete(loaded.model, loaded.tokenizer, args.prompt, fmt, options, max_prompt=max_prompt, stream=sys.stdout)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from loratune.merge import merge_to_folder

    output, dtype = merge_to_folder(
        args.adapter,
        args.output,
        dtype=args.dtype,
        overwrite=args.overwrite,
        model=args.model,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"merged {args.adapter} into {output} ({str(dtype).removeprefix('torch.')} weights)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from loratune.serve.command import serve

    return serve(args)


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "generate": cmd_generate,
    "merge": cmd_merge,
    "compare": cmd_compare,
    "serve": cmd_serve,
    "inspect": cmd_inspect,
}


DISK_ERRORS = {
    errno.ENOSPC: "free some space on that disk, or pass a folder on another",
    errno.EDQUOT: "free some of your disk quota, or pass a folder on another disk",
    errno.ENAMETOOLONG: "pass a shorter path (most file systems take 255 characters per name)",
    errno.EROFS: "pass a folder on a writable disk",
    errno.EACCES: "pass a path you may read and write",
}


class _WarningLines(logging.Handler):
    """loratune's log records on stderr as one line each: ``warning: <message>``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _quiet_libraries() -> None:
    """Keep the console for loratune's own output and for download progress.

    Library warnings and the per-item processing bars are off: datasets' own bars (map, "Tokenising",
    split generation) and transformers' (per-tensor "Loading weights"). huggingface_hub's download bars,
    which model and dataset downloads both use, stay on. loratune's own log warnings print as one
    ``warning: ...`` line each.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    from loratune.models import empty_tqdm

    transformers.logging.set_verbosity_error()
    transformers.logging.set_tqdm_hook(empty_tqdm)
    datasets.disable_progress_bars()  # datasets' bars only; huggingface_hub's are separate
    datasets.logging.set_verbosity_error()
    own = logging.getLogger("loratune")
    if not any(isinstance(h, _WarningLines) for h in own.handlers):
        own.addHandler(_WarningLines(logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a bad flag (its line already printed)
        return int(exit_.code or 0)
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
    except Exception as err:  # a full disk, a name too long, a read-only folder...: one line, not a traceback
        code = os_error_code(err)  # also a library's error that carries one (safetensors in save_pretrained)
        if code not in DISK_ERRORS:
            raise
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"error: {os.strerror(code)}{where}; {DISK_ERRORS[code]}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
