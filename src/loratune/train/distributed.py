"""Data-parallel training on torch.distributed: one process per device, started by ``torchrun``.

``torchrun --nproc-per-node N -m loratune train ...`` (or ``loratune train --nproc N``, which calls
torchrun's own launcher, ``torch.distributed.run``) starts N processes; torchrun tells each its place
in the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``). ``session`` then joins
the process group (gloo on CPU, nccl on CUDA, with a timeout) and yields a ``DataParallel``:

* the model, with LoRA added and the base frozen, is wrapped in ``DistributedDataParallel``, so only
  the trainable parameters (LoRA and the head) are bucketed and all-reduced; a communication hook
  counts the bytes each step all-reduces;
* micro-steps of gradient accumulation run under ``no_sync``;
* evaluation is sharded by whole batches and the shards' metric accumulators are gathered on rank 0;
* rank 0 alone writes (the loop and ``run.py`` ask ``is_main``); other ranks print nothing on stdout.

Without a distributed launch, ``session`` yields ``Parallel``: the same interface for one process,
doing nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from loratune.errors import LoratuneError, PeerLost
from loratune.tasks.base import Metrics

ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# No buffer broadcast before each forward: by its newer name where torch has it (2.13 deprecates the old one).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch."""

    rank: int
    local_rank: int
    world_size: int


def launched() -> Launch | None:
    """The launch torchrun describes in the environment, or None for a plain process."""
    if not all(name in os.environ for name in ENV):
        return None
    env = os.environ
    return Launch(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))


def rank_device(device: torch.device, launch: Launch) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` on CUDA, else ``device``."""
    if device.type != "cuda":
        return device
    if launch.local_rank >= torch.cuda.device_count():
        raise LoratuneError(
            f"local rank {launch.local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
            "start at most one process per GPU (--nproc-per-node)"
        )
    return torch.device("cuda", launch.local_rank)


def trainable_grad_bytes(model: nn.Module) -> int:
    """The bytes of the trainable parameters' gradients (what one step must all-reduce)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


class Parallel:
    """One process: the interface the loop and the run use, each method doing the single-process thing."""

    world_size, rank, local_rank = 1, 0, 0
    backend: str | None = None

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_bytes: list[int] = []  # bytes all-reduced by each optimizer step
        self.trainable_bytes = 0  # the trainable gradients' bytes of the wrapped model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward and backward go through."""
        self.trainable_bytes = trainable_grad_bytes(model)
        return model

    def no_sync(self, net: nn.Module) -> contextlib.AbstractContextManager:
        """Gradients of the coming micro-step stay local (accumulated, not all-reduced)."""
        return contextlib.nullcontext()

    def end_step(self) -> None:
        """An optimizer step is done: close its count of all-reduced bytes."""

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank."""
        return flag

    def window(self, loss: float, examples: int) -> tuple[float, int]:
        """The mean of the ranks' losses and the sum of their examples."""
        return loss, examples

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def reduce_metrics(self, metrics: Metrics) -> dict[str, Any]:
        """The metrics of every rank's shard together, the same on every rank."""
        return metrics.compute()

    def rng_states(self) -> dict[str, torch.Tensor]:
        """The other ranks' RNG states, on rank 0, for a checkpoint (this rank's own is saved anyway)."""
        return {}

    def seed_rank(self, seed: int) -> None:
        """Give this rank an RNG stream of its own (dropout masks); rank 0 keeps the seeded one."""

    def barrier(self) -> None:
        """Wait until every rank gets here."""


@dataclass
class _ByteCount:
    """The comm hook's state: the bytes all-reduced since the last optimizer step."""

    pending: int = 0
    steps: list[int] = field(default_factory=list)


def _counting_allreduce(state: _ByteCount, bucket):
    """DDP's own all-reduce (mean over ranks) of a ``dist.GradBucket``, counting the bucket's bytes.

    ``bucket`` has no annotation: DDP accepts only the real ``dist.GradBucket`` object there, and this
    module's annotations are strings."""
    buffer = bucket.buffer()
    state.pending += buffer.numel() * buffer.element_size()
    return allreduce_hook(None, bucket)


class DataParallel(Parallel):
    """One of ``world_size`` processes of a torchrun launch, in an initialised process group."""

    def __init__(self, launch: Launch, device: torch.device, backend: str) -> None:
        super().__init__(device)
        self.rank, self.local_rank, self.world_size = launch.rank, launch.local_rank, launch.world_size
        self.backend = backend
        self.counter = _ByteCount()
        self.step_bytes = self.counter.steps

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in ``DistributedDataParallel``: its trainable parameters bucketed, rank 0's weights
        broadcast. Buffers are not re-broadcast each forward (LoRA models have no running statistics)."""
        self.trainable_bytes = trainable_grad_bytes(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, **_NO_FORWARD_BUFFER_SYNC)
        ddp.register_comm_hook(self.counter, _counting_allreduce)
        return ddp

    def no_sync(self, net: nn.Module) -> contextlib.AbstractContextManager:
        return net.no_sync()

    def end_step(self) -> None:
        self.counter.steps.append(self.counter.pending)
        self.counter.pending = 0

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def window(self, loss: float, examples: int) -> tuple[float, int]:
        t = torch.tensor([loss, examples], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t[0]) / self.world_size, int(t[1])

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def reduce_metrics(self, metrics: Metrics) -> dict[str, Any]:
        parts: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(metrics, parts, dst=0)
        result = None
        if parts is not None:
            for part in parts[1:]:
                parts[0].merge(part)
            result = parts[0].compute()
        return self.broadcast(result)

    def rng_states(self) -> dict[str, torch.Tensor]:
        own = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        states = self.all_gather(own)
        return {f"rank.{r}.{k}": t for r, s in enumerate(states) if r for k, t in s.items()}

    def seed_rank(self, seed: int) -> None:
        if self.rank:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def barrier(self) -> None:
        dist.barrier()

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None


def restore_rank_rng(tensors: dict[str, torch.Tensor], rank: int, device: torch.device) -> None:
    """Set this rank's RNG from a checkpoint's ``rank.<r>.*`` states, when it holds them (rank 0's are
    the checkpoint's own)."""
    if f"rank.{rank}.cpu" in tensors:
        torch.set_rng_state(tensors[f"rank.{rank}.cpu"])
    if f"rank.{rank}.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[f"rank.{rank}.cuda"], device)


@contextlib.contextmanager
def session(device: torch.device, timeout_s: float) -> Iterator[Parallel]:
    """This process's part of a run: a ``DataParallel`` in a process group under torchrun (gloo on CPU,
    nccl on CUDA; a collective that waits ``timeout_s`` for another rank fails), else ``Parallel``."""
    launch = launched()
    if launch is None:
        yield Parallel(device)
        return
    device = rank_device(device, launch)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, rank=launch.rank, world_size=launch.world_size, timeout=timedelta(seconds=timeout_s)
    )
    try:
        with _quiet_unless_main(launch.rank):
            yield DataParallel(launch, device, backend)
    except (RuntimeError, dist.DistError) as err:
        if not _lost_peer(err):
            raise
        raise PeerLost(
            f"rank {launch.rank} of {launch.world_size} lost the other processes ({_first_line(err)}): another "
            "one stopped or hung; its own message names it, and --resume continues from the last checkpoint"
        ) from None
    finally:
        dist.destroy_process_group()


def _lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective's failure: a peer's connection closed, or the timeout passed."""
    marks = (
        "gloo/transport",
        "Connection reset by peer",
        "Connection closed by peer",
        "Timed out waiting",
        "pair closure",
        "NCCL",
    )
    return isinstance(err, dist.DistError) or any(mark in str(err) for mark in marks)


def _first_line(err: BaseException) -> str:
    """The gist of a collective's error: its first line, without gloo's source location."""
    line = next((x for x in str(err).splitlines() if x.strip()), type(err).__name__)
    line = line.removeprefix("Got the following error when running the callback: RuntimeError: ")
    return line.split("] ", 1)[-1][:200] if line.startswith("[") else line[:200]


@contextlib.contextmanager
def _quiet_unless_main(rank: int) -> Iterator[None]:
    """Only rank 0 prints on stdout; every rank keeps stderr, for its warnings and errors."""
    if rank == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
    sys.stdout.flush()


def launch(nproc: int, argv: list[str]) -> int:
    """``python -m loratune ARGV`` in ``nproc`` processes on this machine, started by torchrun's own launcher
    (``torch.distributed.run``, standalone rendezvous, no restarts); the exit code, 0 when every rank ends well.

    A failed rank stops the others (torchrun); its exit code comes back: 2 and 130 (a user error, Ctrl-C)
    after the rank's own ``error:`` line, else 1 after a line naming the rank.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "loratune"]
    )
    args.training_script_args = argv  # not parsed by torchrun's parser, which takes --r for one of its own
    try:
        run(args)
    except ChildFailedError as err:
        return _failed_rank(*root_failure(err.failures))
    except SignalException as err:
        print(f"interrupted ({err.sigval.name}): the processes were stopped", file=sys.stderr)
        return 130
    return 0


def root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The rank whose failure stopped a launch, and that failure. torchrun times failures to the second, so it
    may see the cause and its consequences at once: a rank killed by a signal comes first, then one that exited
    with an error (a rank that lost its peer exits too), then one stopped by SIGTERM (what torchrun sends the
    others); within each, the earliest, then the lowest rank."""

    def order(item: tuple[int, Any]) -> tuple[int, float, int]:
        rank, failure = item
        kind = 2 if failure.exitcode == -signal.SIGTERM else 1 if failure.exitcode >= 0 else 0
        return kind, failure.timestamp, rank

    return min(failures.items(), key=order)


def _failed_rank(rank: int, failure: Any) -> int:
    """The exit code for a launch whose first failure is ``rank``'s, after a line naming it (unless the rank
    printed its own: a user error or an interrupt)."""
    code = failure.exitcode
    if code in (2, 130):
        return code
    how = f"was killed by {failure.signal_name()}" if code < 0 else f"failed with exit code {code}"
    print(
        f"error: rank {rank} (pid {failure.pid}) {how}, so the run stopped; its messages are above, and "
        "--resume continues from the last checkpoint",
        file=sys.stderr,
    )
    return 1
