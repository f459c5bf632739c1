"""fastpath: the lean kernels inside real transformers models compute what the model's own do."""

from __future__ import annotations

import json

import pytest
import torch

import loratune.kernels.lean_attention as attn_module
import loratune.kernels.lean_dropout as dropout_module
from conftest import tiny_bert_cls, tiny_llama_lm
from loratune import LoraConfig, add_lora
from loratune.fastpath import LEAN_ATTENTION, restore_torch_kernels, use_lean_kernels
from loratune.kernels import LeanDropout


def _keep_all(shape, p, device="cpu", generator=None):
    return torch.ones(shape, dtype=torch.bool), 1.0


@pytest.fixture
def no_drops(monkeypatch):
    """Masks that keep everything: a training-mode forward then equals the eval-mode one."""
    monkeypatch.setattr(attn_module, "dropout_mask", _keep_all)
    monkeypatch.setattr(dropout_module, "dropout_mask", _keep_all)
    calls = []
    real = attn_module._AttentionFn.apply
    monkeypatch.setattr(attn_module._AttentionFn, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


def _grads(model, **batch):
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def _compare(lean, ref, batch):
    lean.train()
    ref.eval()  # the reference drops nothing
    loss_a, grads_a = _grads(lean, **batch)
    loss_b, grads_b = _grads(ref, **batch)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_bert_with_padding_lora(no_drops):
    batch = {
        "input_ids": torch.randint(0, 120, (4, 12)),
        "attention_mask": torch.tensor([[1] * 12, [1] * 8 + [0] * 4, [1] * 5 + [0] * 7, [1] * 12]),
        "labels": torch.tensor([0, 1, 2, 1]),
    }
    config = LoraConfig(r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    lean, ref = (add_lora(tiny_bert_cls(), config) for _ in range(2))
    ref.load_state_dict(lean.state_dict())
    report = use_lean_kernels(lean)
    assert report.attention and lean.config._attn_implementation == LEAN_ATTENTION
    assert report.dropouts == sum(isinstance(m, LeanDropout) for m in lean.modules()) > 0
    assert report.first_token_layer  # the pooler reads position 0 only
    _compare(lean, ref, batch)
    assert len(no_drops) == 2  # both layers' attention went through the lean kernel


def _tiny_classifier(kind: str):
    import transformers

    config_cls = getattr(transformers, f"{kind}Config")
    model_cls = getattr(transformers, f"{kind}ForSequenceClassification")
    torch.manual_seed(0)
    if kind == "DistilBert":
        sizes = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}
    else:
        sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
        if kind == "Electra":
            sizes["embedding_size"] = 32
    cfg = config_cls(vocab_size=120, max_position_embeddings=70, num_labels=3, **sizes)
    return model_cls(cfg).eval()


@pytest.mark.parametrize("kind", ["Bert", "Roberta", "Electra", "DistilBert"])
def test_first_token_layer_gives_the_same_loss_and_gradients(kind, no_drops):
    """The last layer computes position 0 only: logits, loss and every gradient stay the same."""
    lean, ref = _tiny_classifier(kind), _tiny_classifier(kind)
    targets = ["q_lin", "v_lin"] if kind == "DistilBert" else ["query", "value"]
    config = LoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=["classifier"])
    lean, ref = add_lora(lean, config), add_lora(ref, config)
    ref.load_state_dict(lean.state_dict())
    assert use_lean_kernels(lean).first_token_layer
    batch = {
        "input_ids": torch.randint(3, 120, (3, 11)),
        "attention_mask": torch.tensor([[1] * 11, [1] * 6 + [0] * 5, [1] * 2 + [0] * 9]),
        "labels": torch.tensor([0, 1, 2]),
    }
    _compare(lean, ref, batch)
    lean.eval()
    with torch.no_grad():
        torch.testing.assert_close(lean(**batch).logits, ref(**batch).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the LoRA layers' shared bf16 input casts
            torch.testing.assert_close(lean(**batch).logits, ref(**batch).logits, atol=2e-2, rtol=2e-2)


def test_first_token_layer_does_less_work_and_restores():
    from loratune.train.flops import flop_counter

    model = tiny_bert_cls().train()
    ids = torch.randint(0, 120, (2, 16))

    def counted_flops() -> int:
        counter = flop_counter()
        with counter:
            model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        return counter.get_total_flops()

    whole = counted_flops()
    use_lean_kernels(model)
    trimmed = counted_flops()
    # one of two layers now runs its query, output and feed-forward on 2 rows instead of 32
    assert trimmed < 0.65 * whole
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert hidden[-1].shape[1] == 1 and hidden[-2].shape[1] == 16
    restore_torch_kernels(model)
    assert counted_flops() == whole
    assert model(input_ids=ids, output_hidden_states=True).hidden_states[-1].shape[1] == 16


def test_token_classifiers_keep_every_position():
    from transformers import BertForTokenClassification

    model = BertForTokenClassification(tiny_bert_cls().config)
    assert not use_lean_kernels(model).first_token_layer
    assert model(input_ids=torch.randint(0, 120, (2, 9))).logits.shape == (2, 9, 3)


def test_llama_causal_grouped_query_full_finetuning(no_drops):
    lean, ref = tiny_llama_lm(), tiny_llama_lm()
    for m in (lean, ref):
        m.config.attention_dropout = 0.1
        for layer in m.model.layers:
            layer.self_attn.attention_dropout = 0.1
    use_lean_kernels(lean)
    ids = torch.randint(0, 120, (2, 9))
    _compare(lean, ref, {"input_ids": ids, "labels": ids})
    assert len(no_drops) == 2


def test_inference_and_restore_leave_the_model_as_it_was(tmp_path):
    model = tiny_bert_cls()
    ids = torch.randint(0, 120, (2, 7))
    before = model(input_ids=ids).logits
    use_lean_kernels(model)
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    model.save_pretrained(tmp_path)
    assert LEAN_ATTENTION not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    restore_torch_kernels(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, LeanDropout) for m in model.modules())


def test_eager_models_keep_their_attention():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = BertForSequenceClassification(cfg)
    model.set_attn_implementation("eager")
    report = use_lean_kernels(model)
    assert not report.attention and model.config._attn_implementation == "eager"
    assert report.dropouts > 0


def test_gradient_checkpointing_redraws_the_same_masks():
    """Non-reentrant checkpointing restores the RNG, so recomputed lean dropouts drop the same entries."""
    batch = {"input_ids": torch.randint(0, 120, (3, 10)), "labels": torch.tensor([0, 1, 2])}
    grads = []
    for checkpointing in (False, True):
        model = tiny_bert_cls()
        use_lean_kernels(model)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(11)
        grads.append(_grads(model, **batch))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


# ------------------------------------------------------------------ feature detection: fall back, never fail
def test_an_attention_that_is_not_routed_through_the_interface_keeps_its_own():
    """MPNet has its own attention code (no AttentionInterface): it keeps it, and the note says why."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    cfg = MPNetConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = MPNetForSequenceClassification(cfg)
    model.config._attn_implementation = "sdpa"  # as if transformers had picked it
    ids = torch.randint(0, 60, (2, 7))
    before = model.eval()(input_ids=ids).logits
    report = use_lean_kernels(model)
    assert not report.attention and not report.first_token_layer and report.dropouts > 0
    assert len(report.notes) == 1 and "MPNetForSequenceClassification" in report.notes[0]
    assert "AttentionInterface" in report.notes[0] and "\n" not in report.notes[0]
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_a_transformers_without_the_attention_interface_keeps_the_model_s_attention(monkeypatch):
    import loratune.fastpath as fastpath

    def missing():
        raise ImportError("cannot import name 'ALL_MASK_ATTENTION_FUNCTIONS'")

    monkeypatch.setattr(fastpath, "_register", missing)
    model = tiny_bert_cls()
    report = use_lean_kernels(model)
    assert not report.attention and model.config._attn_implementation == "sdpa"
    assert report.first_token_layer and report.dropouts > 0  # the other kernels still apply
    assert report.notes == ["the lean attention cannot be plugged into this transformers (ImportError); "
                            "BertForSequenceClassification keeps its own"]  # fmt: skip


class _ShiftedSelfAttention(torch.nn.Module):
    """A self-attention of another shape than the fast path knows: it also reads position 1."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, hidden_states, *args, **kwargs):
        out = self.inner(hidden_states, *args, **kwargs)
        return (out[0] + hidden_states[:, 1:2], *out[1:])


def _off_by_half(real):
    return lambda *args, **kwargs: real(*args, **kwargs) + 0.5


@pytest.mark.parametrize("broken", ["unknown attention class", "computes another value", "raises"])
def test_a_last_layer_that_fails_the_first_token_check_stays_whole(broken, monkeypatch):
    import loratune.fastpath as fastpath

    model = tiny_bert_cls()
    ids = torch.randint(0, 120, (2, 9))
    prefix = "BertForSequenceClassification's last layer keeps computing every position"
    if broken == "unknown attention class":
        attention = model.bert.encoder.layer[-1].attention
        attention.self = _ShiftedSelfAttention(attention.self)
        note = f"{prefix} (its attention class _ShiftedSelfAttention is not one this loratune knows)"
    elif broken == "computes another value":  # e.g. a transformers whose layer code changed meaning
        monkeypatch.setattr(fastpath, "_attend_first", _off_by_half(fastpath._attend_first))
        note = f"{prefix} (a check of the first-token layer failed: its logits changed)"
    else:  # e.g. a transformers whose attention functions take other arguments
        monkeypatch.setattr(fastpath, "_attend_first", lambda *a, **k: (_ for _ in ()).throw(TypeError("bad call")))
        note = f"{prefix} (a check of the first-token layer failed: TypeError: bad call)"
    before = model.eval()(input_ids=ids).logits
    report = use_lean_kernels(model)
    assert not report.first_token_layer and report.attention and report.notes == [note]
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, before)


def test_the_first_token_check_leaves_the_random_stream_alone():
    model = tiny_bert_cls()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert use_lean_kernels(model).first_token_layer
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
