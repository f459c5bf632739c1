"""``LoraLinear`` and ``ModulesToSaveWrapper``: the two modules the engine puts into a model.

``LoraLinear`` wraps a frozen linear layer ``W`` (``nn.Linear``, or the transformers ``Conv1D`` of
GPT-2, whose weight is stored transposed, "fan_in_fan_out") and adds named low-rank updates::

    y = W x + b + scaling * B (A (dropout(x)))        A: r x in,  B: out x r

Only ``A`` and ``B`` train. ``B`` starts at zero, so a fresh adapter leaves the outputs unchanged.
One adapter is active at a time; a *mixed batch* routes each example through its own adapter.

``ModulesToSaveWrapper`` keeps the original of a fully trained module (the task head) and one
trainable copy per adapter, and routes the forward the same way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from loratune.kernels.lean_dropout import apply_mask, dropout_mask
from loratune.kernels.memo import LastConversion

BASE = "__base__"  # name, in a mixed batch, of "no adapter": the base model's own output


def is_conv1d(module: nn.Module) -> bool:
    """True for the transformers ``Conv1D`` (GPT-2): a linear layer with a transposed weight."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def is_linear(module: nn.Module) -> bool:
    """True for the layers LoRA can wrap: ``nn.Linear`` and the transformers ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a ``LoraLinear``, an ``nn.Linear`` or a ``Conv1D`` (whose weight is transposed)."""
    if isinstance(module, LoraLinear):
        return module.in_features, module.out_features
    rows, cols = module.weight.shape
    return (rows, cols) if is_conv1d(module) else (cols, rows)


@dataclass
class MixedRouting:
    """Per-example adapter routing of one batch: ``ids[i]`` indexes ``names``; -1 is the base model."""

    ids: torch.Tensor
    names: list[str]
    _groups: dict[torch.device, list[torch.Tensor | None]] = field(default_factory=dict, repr=False)

    def groups(self, device: torch.device) -> list[torch.Tensor | None]:
        """Per name, the indices of its examples on ``device`` (None when all are), computed once per
        batch: every adapted layer of the forward reuses them."""
        if device not in self._groups:
            ids = self.ids.to(device)
            rows = [(ids == i).nonzero().squeeze(1) for i in range(len(self.names))]
            self._groups[device] = [None if len(r) == len(ids) else r for r in rows]
        return self._groups[device]


_CASTS = LastConversion()  # the most recent autocast copy of a layer input, see _shared_cast


def _shared_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``, made once per input tensor: sibling layers (query, value) share the copy.

    Under bf16 autocast each adapted layer would otherwise cast the same input again, and each
    would save its own bf16 copy for the backward pass (see ``kernels.memo``).
    """
    if x.dtype == dtype:
        return x
    return _CASTS.get(x, dtype, lambda: x.detach().to(dtype))


def _keep(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` where ``mask`` is True, zero elsewhere (a new tensor).

    In bf16/fp16 ``torch.where`` is not vectorised on CPU, so the mask multiplies by its ``uint8``
    view there; fp32 keeps ``where``, which the multiply did not beat in a whole step
    (``benchmarks/README.md``).
    """
    if x.dtype in (torch.bfloat16, torch.float16):
        return apply_mask(x, mask)
    return torch.where(mask, x, 0.0)


class _LoraLinearFn(torch.autograd.Function):
    """``W x + b + scaling * B A dropout(x)`` for a frozen ``W``, with a lean autograd footprint.

    Plain autograd through ``nn.Linear``, ``nn.Dropout`` and two more ``nn.Linear`` would keep,
    per adapted layer, the dropped-out copy of ``x`` and a 4-byte-per-element dropout mask (CPU
    dropout multiplies by a float noise tensor), and under autocast a bf16 copy of ``x`` and of
    the frozen ``W``. This function keeps only:

    * ``x`` in the compute dtype: the input itself, or under autocast one bf16 copy shared by the
      sibling layers that read the same input (``_shared_cast``);
    * the dropout mask as booleans (1 byte per element, drawn by ``kernels.dropout_mask``, faster
      than ``bernoulli_`` on CPU); the dropped-out input is recomputed;
    * the small ``A dropout(x)`` (r values per token);
    * references to the parameters (no copies: ``W`` is cast again in the backward pass).

    The mask is applied by ``_keep``: ``torch.where`` in fp32, a multiply by its ``uint8`` view in
    bf16/fp16 (one full-width result either way).
    The LoRA product is accumulated in place into the base output (one ``addmm_``), and the
    dropout scale ``1/P(keep)`` is applied to the r-wide tensors, not the full-width ones.
    ``weight=None`` computes the LoRA term alone (for a base layer that must run on its own).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, weight_a, weight_b, scaling, p, dtype, transposed):  # type: ignore[override]
        xc = _shared_cast(x, dtype)
        x2 = xc.reshape(-1, xc.shape[-1])
        a, b = weight_a.to(dtype), weight_b.to(dtype)
        out_features = b.shape[0]
        mask, keep_scale = None, 1.0
        if p > 0.0:
            mask, keep_scale = dropout_mask(x2.shape, p, x2.device)
            ax = F.linear(_keep(x2, mask), a).mul_(keep_scale)
        else:
            ax = F.linear(x2, a)
        if weight is None:
            out = torch.mm(ax, b.t()).mul_(scaling)
        else:
            w = weight.to(dtype)
            w_t = w if transposed else w.t()  # (in, out)
            out = torch.addmm(bias.to(dtype), x2, w_t) if bias is not None else torch.mm(x2, w_t)
            out.addmm_(ax, b.t(), alpha=scaling)
        ctx.save_for_backward(xc, mask, ax, weight, weight_a, weight_b)
        ctx.scaling, ctx.keep_scale, ctx.dtype, ctx.transposed = scaling, keep_scale, dtype, transposed
        ctx.x_meta = (x.shape, x.dtype)
        return out.reshape(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        xc, mask, ax, weight, weight_a, weight_b = ctx.saved_tensors
        scaling, dtype = ctx.scaling, ctx.dtype
        x_shape, x_dtype = ctx.x_meta
        need_x, need_a, need_b = ctx.needs_input_grad[0], *ctx.needs_input_grad[3:5]
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)
        grad_x = grad_a = grad_b = None
        if need_b:
            grad_b = (g.t() @ ax).mul_(scaling).to(weight_b.dtype)
        if need_x or need_a:
            # d loss / d (A x_dropped), (tokens, r); the dropout scale goes on these r columns
            g_ax = (g @ weight_b.to(dtype)).mul_(scaling * ctx.keep_scale)
            x2 = xc.reshape(-1, xc.shape[-1])
            if need_a:
                x_in = x2 if mask is None else _keep(x2, mask)
                grad_a = (g_ax.t() @ x_in).to(weight_a.dtype)
                del x_in
            if need_x:
                grad_x = g_ax @ weight_a.to(dtype)
                if mask is not None:
                    grad_x = _keep(grad_x, mask)
                if weight is not None:
                    w = weight.to(dtype)
                    grad_x.addmm_(g, w.t() if ctx.transposed else w)
                grad_x = grad_x.reshape(x_shape).to(x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None, None


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class LoraLinear(nn.Module):
    """A frozen linear layer plus named LoRA adapters.

    Args:
        base_layer: the ``nn.Linear`` (or transformers ``Conv1D``) to adapt; kept as ``base_layer``.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        if not is_linear(base_layer):
            raise TypeError(f"LoraLinear wraps nn.Linear or Conv1D, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.in_features, self.out_features = in_out_features(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.lora_dropout: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.mixed: MixedRouting | None = None
        self.train(base_layer.training)  # a wrapped eval-mode model stays in eval mode

    # ---------------------------------------------------------------- adapters
    def add_adapter(self, name: str, r: int, scaling: float, dropout: float = 0.0, init: bool | str = True) -> None:
        """Add adapter ``name`` of rank ``r``; A Kaiming-uniform (or gaussian), B zero.

        A and B take the base weight's dtype, except on a bf16/fp16 (or non-float) base: there they
        are fp32, since small updates are lost in half precision (as PEFT's ``autocast_adapter_dtype``).
        The forward computes the adapter in the autocast dtype, or else in the adapter's own.
        """
        w = self.base_layer.weight
        kwargs = {"device": w.device, "dtype": w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32}
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kwargs)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kwargs)
        self.lora_A[name].train(self.training)
        self.lora_B[name].train(self.training)
        self.scaling[name] = float(scaling)
        self.lora_dropout[name] = float(dropout)
        self.reset_adapter(name, init)

    @torch.no_grad()
    def reset_adapter(self, name: str, init: bool | str = True) -> None:
        """(Re)initialise adapter ``name``: A Kaiming-uniform (a=sqrt(5)) or N(0, 1/r), B zero."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if init == "gaussian":
            nn.init.normal_(a, std=1.0 / a.shape[0])
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        if init is False:
            nn.init.kaiming_uniform_(b, a=math.sqrt(5))
        else:
            nn.init.zeros_(b)

    def has_adapter(self, name: str) -> bool:
        return name in self.lora_A

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            self.unmerge()
        del self.lora_A[name], self.lora_B[name], self.scaling[name], self.lora_dropout[name]
        if self.active_adapter == name:
            self.active_adapter = None

    # ---------------------------------------------------------------- merge
    def delta_weight(self, name: str) -> torch.Tensor:
        """``scaling * B A`` in the base weight's layout (transposed for Conv1D), computed in fp32."""
        a = self.lora_A[name].weight.float()
        b = self.lora_B[name].weight.float()
        delta = (b @ a) * self.scaling[name]
        return delta.t() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Add adapter ``name`` into the base weight, so that the forward costs nothing extra."""
        if name in self.merged_adapters:
            return
        w = self.base_layer.weight
        w.copy_((w.float() + self.delta_weight(name)).to(w.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract every merged adapter from the base weight again."""
        w = self.base_layer.weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            w.copy_((w.float() - self.delta_weight(name)).to(w.dtype))

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base_layer(x)
        if self.mixed is not None:
            return self._mixed_forward(x, self.mixed)
        name = self.active_adapter
        if name is None or name in self.merged_adapters or name not in self.lora_A:
            return self.base_layer(x)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        p = self.lora_dropout[name] if self.training else 0.0
        autocast = _autocast_dtype(x.device.type) if x.is_floating_point() else None
        dtype = autocast or a.dtype
        if not torch.is_grad_enabled() or not (x.requires_grad or a.requires_grad or b.requires_grad):
            result = self.base_layer(x)  # inference: plain ops, nothing is saved anyway
            x = x.to(dtype)
            if p > 0.0:
                x = F.dropout(x, p, training=True)
            return result + (F.linear(F.linear(x, a.to(dtype)), b.to(dtype)) * self.scaling[name]).to(result.dtype)
        args = (a, b, self.scaling[name], p, dtype, self.fan_in_fan_out)
        if self._fusable(x, dtype):
            base = self.base_layer
            return _LoraLinearFn.apply(x, base.weight, base.bias, *args)
        result = self.base_layer(x)
        return result + _LoraLinearFn.apply(x, None, None, *args).to(result.dtype)

    def _fusable(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the frozen base product can run inside ``_LoraLinearFn`` (same result, less memory).

        It needs a plain ``nn.Linear``/``Conv1D`` without hooks, frozen weight and bias, and
        matching dtypes (or autocast, which computes in ``dtype`` anyway).
        """
        base = self.base_layer
        if not (type(base) is nn.Linear or self.fan_in_fan_out):
            return False
        if base._forward_hooks or base._forward_pre_hooks:
            return False
        params = [base.weight] + ([base.bias] if base.bias is not None else [])
        if any(t.requires_grad for t in params):
            return False
        autocast = _autocast_dtype(x.device.type) == dtype
        ok = {torch.float32, dtype} if autocast else {dtype}
        return x.dtype in ok and all(t.dtype in ok for t in params)

    def _mixed_forward(self, x: torch.Tensor, routing: MixedRouting) -> torch.Tensor:
        """The base output plus, grouped per adapter, each adapter's ``B A x`` added to its own rows only
        (at its own rank; no loop over examples). Rows whose adapter does not adapt this layer, or that
        go to the base model, get the base output and cost nothing more."""
        batch = routing.ids.shape[0]
        if x.shape[0] != batch:
            raise ValueError(f"mixed batch: {batch} adapter names for a batch of {x.shape[0]} examples")
        result = self.base_layer(x)
        dtype = _autocast_dtype(x.device.type) or x.dtype
        for name, rows in zip(routing.names, routing.groups(x.device), strict=True):
            if name not in self.lora_A or (rows is not None and len(rows) == 0):
                continue
            xs = (x if rows is None else x.index_select(0, rows)).to(dtype)
            a, b = self.lora_A[name].weight.to(dtype), self.lora_B[name].weight.to(dtype)
            delta = (F.linear(F.linear(xs, a), b) * self.scaling[name]).to(result.dtype)
            if rows is None:  # one adapter for the whole batch
                return result + delta
            result.index_add_(0, rows, delta)
        return result

    def extra_repr(self) -> str:
        ranks = {n: m.weight.shape[0] for n, m in self.lora_A.items()}
        return f"adapters={ranks}, active={self.active_adapter!r}, merged={self.merged_adapters}"


class ModulesToSaveWrapper(nn.Module):
    """A module trained in full per adapter (a task head): the frozen original plus one copy each.

    The forward uses the active adapter's copy, the original when none is active or adapters are
    disabled, and in a mixed batch each example's own copy (grouped by adapter, whatever the
    module's type; its first argument must be batch-first).
    """

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.mixed: MixedRouting | None = None
        self.train(original_module.training)

    def add_adapter(self, name: str) -> None:
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def has_adapter(self, name: str) -> bool:
        return name in self.modules_to_save

    def delete_adapter(self, name: str) -> None:
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def _module_for(self, name: str | None) -> nn.Module:
        if name is None or self.disabled or name not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[name]

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.mixed is None or self.disabled:
            return self._module_for(self.active_adapter)(x, *args, **kwargs)
        routing = self.mixed
        ids = routing.ids.to(x.device)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"mixed batch: {ids.shape[0]} adapter names for a batch of {x.shape[0]} examples")
        out = None
        for k in torch.unique(ids).tolist():
            rows = (ids == k).nonzero().squeeze(1)
            y = self._module_for(routing.names[k] if k >= 0 else None)(x[rows], *args, **kwargs)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[rows] = y
        return out
