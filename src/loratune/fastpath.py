"""Plug ``loratune.kernels`` into a transformers model for training (``--kernels lean``).

Three changes, all exact in what the model outputs (only dropout draws its random numbers
differently):

* attention: models on the ``sdpa`` implementation switch to ``loratune_sdpa``, registered with
  transformers' ``AttentionInterface``. It is SDPA, except when dropout is active on CPU with
  gradients, where SDPA's math path is replaced by ``kernels.attention`` (recomputed softmax,
  1-byte dropout mask);
* every ``nn.Dropout`` becomes a ``kernels.LeanDropout`` (1-byte saved mask, fast CPU draw);
* first-token classifiers (BERT, RoBERTa, ELECTRA, DistilBERT ``...ForSequenceClassification``:
  the head reads position 0 of the last hidden state and nothing else) get a last encoder layer
  that computes position 0 only. Its keys and values still come from every position, so the
  logits, the loss and every gradient are the same, but the layer's query, attention output,
  feed-forward and their backward passes shrink from ``batch x length`` rows to ``batch`` rows:
  1/12 of bert-base's encoder work, 1/6 of MiniLM's. The model's ``last_hidden_state`` then has
  length 1.

Each change is feature-detected, because it relies on transformers internals (its
``AttentionInterface``, the layer classes' attribute names): a model whose internals are not what
this module expects (an older or newer transformers, an architecture it does not know) keeps its
own code for that part, and ``KernelReport.notes`` says why in one line. The first-token layer is
also checked at once: a tiny batch must give the same logits with and without it. The transformers
internals are imported inside the functions that use them, so that a transformers without one
makes that function fall back instead of making ``import loratune`` fail.

``restore_torch_kernels`` undoes all three, e.g. to read every position's hidden state after training.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from loratune.kernels import LeanDropout, attention

LEAN_ATTENTION = "loratune_sdpa"


def _lean_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' attention-interface signature; ``(batch, L, heads, head_dim)`` out, no weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    special = any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux", "sinks"))
    if dropout == 0.0 or special or query.device.type != "cpu" or not torch.is_grad_enabled():
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    n_rep = getattr(module, "num_key_value_groups", 1)
    if n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = bool(query.shape[2] > 1 and attention_mask is None and is_causal)
    out = attention(query, key, value, attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(LEAN_ATTENTION, _lean_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(LEAN_ATTENTION, sdpa_mask)


# Sequence classifiers whose head reads only position 0 of the last hidden state (the pooler,
# ``features[:, 0]`` or ``hidden_state[:, 0]``), over encoder layers of BERT's or DistilBERT's code.
FIRST_TOKEN_CLASSIFIERS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
        "DistilBertForSequenceClassification",
    }
)


def _attend_first(attn, projections, hidden_states, attention_mask, kwargs) -> torch.Tensor:
    """Attention output of position 0 only, ``(batch, 1, heads * head_dim)``: its query, every key and value."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    q_proj, k_proj, v_proj = (getattr(attn, name) for name in projections)
    batch, length = hidden_states.shape[:2]
    dim = attn.attention_head_size
    query = q_proj(hidden_states[:, :1]).view(batch, 1, -1, dim).transpose(1, 2)
    key = k_proj(hidden_states).view(batch, length, -1, dim).transpose(1, 2)
    value = v_proj(hidden_states).view(batch, length, -1, dim).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the query row of position 0
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    dropout = attn.dropout.p if attn.training else 0.0
    out, _ = interface(attn, query, key, value, attention_mask, dropout=dropout, scaling=attn.scaling, **kwargs)
    return out.reshape(batch, 1, -1).contiguous()


def _first_token_bert_attention(self, hidden_states, attention_mask=None, encoder_hidden_states=None, *args, **kwargs):
    """``BertAttention.forward`` (self-attention and its output block) for position 0 only."""
    if encoder_hidden_states is not None or args or kwargs.get("cache") is not None:
        return type(self).forward(self, hidden_states, attention_mask, encoder_hidden_states, *args, **kwargs)
    kwargs.pop("cache", None)
    kwargs.pop("encoder_attention_mask", None)
    out = _attend_first(self.self, ("query", "key", "value"), hidden_states, attention_mask, kwargs)
    return self.output(out, hidden_states[:, :1]), None


def _first_token_distilbert_block(self, hidden_states, attention_mask=None, **kwargs):
    """DistilBERT's ``TransformerBlock.forward`` for position 0 only."""
    attn = self.attention
    out = attn.out_lin(_attend_first(attn, ("q_lin", "k_lin", "v_lin"), hidden_states, attention_mask, kwargs))
    attention_output = self.sa_layer_norm(out + hidden_states[:, :1])
    return self.output_layer_norm(self.ffn(attention_output) + attention_output)


def _has(module: nn.Module | None, *names: str) -> bool:
    return module is not None and all(hasattr(module, name) for name in names)


def _trimmable_last_layer(model: nn.Module):
    """``(module, forward)`` to patch in a first-token classifier's last encoder layer.

    None for models that are not first-token classifiers; a reason (str) for one whose last layer
    is not of a shape this module knows.
    """
    if type(model).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return None
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "it is configured as a decoder"
    base = getattr(model, model.base_model_prefix, None)
    common = ("dropout", "attention_head_size", "scaling", "config")
    encoder = getattr(base, "encoder", None)
    if encoder is not None and getattr(encoder, "layer", None):  # BERT's layer code
        attention = getattr(encoder.layer[-1], "attention", None)
        sa = getattr(attention, "self", None)
        if not (_has(attention, "output") and _has(sa, "query", "key", "value", *common)):
            return "its attention has attributes this loratune does not know"
        target, forward = attention, _first_token_bert_attention
    elif getattr(getattr(base, "transformer", None), "layer", None):  # DistilBERT's
        block = base.transformer.layer[-1]
        sa = getattr(block, "attention", None)
        if not (
            _has(block, "sa_layer_norm", "ffn", "output_layer_norm")
            and _has(sa, "q_lin", "k_lin", "v_lin", "out_lin", *common)
        ):
            return "its attention has attributes this loratune does not know"
        target, forward = block, _first_token_distilbert_block
    else:
        return "its encoder layers are not where this loratune looks for them"
    if not hasattr(sys.modules[type(sa).__module__], "eager_attention_forward"):
        return f"its attention class {type(sa).__name__} is not one this loratune knows"
    return target, forward


def _untrim_last_layer(model: nn.Module) -> None:
    found = _trimmable_last_layer(model)
    if isinstance(found, tuple):
        vars(found[0]).pop("forward", None)


@dataclass
class KernelReport:
    """What ``use_lean_kernels`` changed, and why a kernel was left out (one line each)."""

    attention: bool  # the model now runs loratune_sdpa
    dropouts: int  # nn.Dropout layers swapped for LeanDropout
    first_token_layer: bool = False  # the last encoder layer computes position 0 only
    notes: list[str] = field(default_factory=list)


def _swap_dropouts(model: nn.Module, to_lean: bool) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if to_lean and type(child) is nn.Dropout and child.p > 0 and not child.inplace:
                lean = LeanDropout(child.p)
                lean.train(child.training)
                setattr(parent, name, lean)
                count += 1
            elif not to_lean and type(child) is LeanDropout:
                plain = nn.Dropout(child.p)
                plain.train(child.training)
                setattr(parent, name, plain)
                count += 1
    return count


def use_lean_kernels(model: nn.Module) -> KernelReport:
    """Switch ``model`` (a transformers model, or any module for the dropouts) to the lean kernels.

    What cannot be switched safely keeps the model's own code; ``notes`` says what and why.
    """
    notes: list[str] = []
    attention = _use_lean_attention(model, notes)
    dropouts = _swap_dropouts(model, to_lean=True)
    first_token = _use_first_token_layer(model, notes)
    return KernelReport(attention=attention, dropouts=dropouts, first_token_layer=first_token, notes=notes)


def _use_lean_attention(model: nn.Module, notes: list[str]) -> bool:
    """Switch an SDPA model to ``loratune_sdpa`` where transformers lets its attention be replaced."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation in (None, LEAN_ATTENTION):
        return implementation == LEAN_ATTENTION
    if implementation != "sdpa":
        notes.append(f"{name} runs {implementation!r} attention, which the lean attention does not replace")
        return False
    if not getattr(model, "_supports_attention_backend", False):
        notes.append(f"{name} does not route its attention through transformers' AttentionInterface; it keeps its own")
        return False
    try:
        _register()
        model.set_attn_implementation(LEAN_ATTENTION)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        notes.append(
            f"the lean attention cannot be plugged into this transformers ({type(err).__name__}); {name} keeps its own"
        )
        return False
    if config._attn_implementation != LEAN_ATTENTION:
        notes.append(f"{name} did not accept the lean attention; it keeps its own")
        return False
    return True


def _use_first_token_layer(model: nn.Module, notes: list[str]) -> bool:
    """Trim the last layer of a first-token classifier, if a tiny batch gives the same logits after."""
    found = _trimmable_last_layer(model)
    if not isinstance(found, tuple):
        if found is not None:
            notes.append(f"{type(model).__name__}'s last layer keeps computing every position ({found})")
        return False
    target, forward = found
    try:
        same = _same_logits_when_trimmed(model, target, forward)
    except Exception as err:  # unknown internals: any failure means "do not trim"
        same, reason = False, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    else:
        reason = "its logits changed"
    if not same:
        vars(target).pop("forward", None)
        notes.append(
            f"{type(model).__name__}'s last layer keeps computing every position (a check of the "
            f"first-token layer failed: {reason})"
        )
    return same


@torch.no_grad()
def _same_logits_when_trimmed(model: nn.Module, target: nn.Module, forward) -> bool:
    """Patch ``target.forward`` and check the logits of a tiny padded batch against the untrimmed model.

    The batch is drawn from a private generator, so the global random stream is left as it was.
    """
    device = next(model.parameters()).device
    ids = torch.randint(model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    was_training = model.training
    model.eval()
    try:
        reference = model(input_ids=ids, attention_mask=mask).logits
        target.forward = types.MethodType(forward, target)
        trimmed = model(input_ids=ids, attention_mask=mask).logits
    finally:
        model.train(was_training)
    return trimmed.shape == reference.shape and torch.allclose(trimmed, reference, rtol=1e-4, atol=1e-5)


def restore_torch_kernels(model: nn.Module) -> None:
    """Undo ``use_lean_kernels``: SDPA attention, plain ``nn.Dropout`` and a whole last layer again."""
    _untrim_last_layer(model)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == LEAN_ATTENTION:
        model.set_attn_implementation("sdpa")
    _swap_dropouts(model, to_lean=False)
