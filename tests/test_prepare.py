"""prepare: prepare_model (the CLI's and the API's one preparation) and the frozen linears in half precision."""

import torch

from loratune.prepare import store_frozen_linears


def _lora_bert():
    from conftest import tiny_bert_cls
    from loratune import LoraConfig, add_lora

    config = LoraConfig(r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    return add_lora(tiny_bert_cls(), config)


def _loss_and_grads(model, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_frozen_linears_stored_in_bf16_give_the_same_loss_and_gradients():
    from torch import nn

    ref, stored = _lora_bert(), _lora_bert()
    stored.load_state_dict(ref.state_dict())
    count = store_frozen_linears(stored, "bf16")
    frozen = [m for m in stored.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad]
    assert count == len(frozen) > 0
    assert all(m.weight.dtype == torch.bfloat16 and m.bias.dtype == torch.bfloat16 for m in frozen)
    assert all(p.dtype == torch.float32 for p in stored.parameters() if p.requires_grad)  # adapters, head
    assert stored.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    batch = {"input_ids": torch.randint(0, 120, (3, 10)), "labels": torch.tensor([0, 1, 2])}
    loss_a, grads_a = _loss_and_grads(ref, batch)
    loss_b, grads_b = _loss_and_grads(stored, batch)
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=name)


def test_fp32_tied_weights_and_frozen_adapters_keep_their_dtype():
    from conftest import tiny_gpt2_lm
    from loratune import LoraConfig, add_lora, set_adapter

    assert store_frozen_linears(_lora_bert(), "fp32") == 0
    model = tiny_gpt2_lm()
    add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["c_attn"]), adapter_name="one")
    add_lora(model, LoraConfig(r=2, alpha=4, target_modules=["c_attn"]), adapter_name="two")
    set_adapter(model, "two")  # "one" is now frozen, yet an adapter: it keeps fp32
    assert store_frozen_linears(model, "bf16") > 0
    assert model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16  # a frozen Conv1D
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: left alone
    assert model.lm_head.weight.dtype == torch.float32
    layer = model.transformer.h[0].attn.c_attn
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert {layer.lora_A[n].weight.dtype for n in ("one", "two")} == {torch.float32}


def test_the_api_prepares_a_model_as_the_cli_does(tiny_model_dir, toy_data):
    """``prepare_model`` on a freshly loaded model gives the weights, loss and gradients of ``loratune train``'s."""
    from loratune import LoraConfig, preparation, prepare_model
    from loratune.models import head_module_names, load_model_for_sequence_classification
    from loratune.train.config import build_config
    from loratune.train.setup import prepare

    cfg = build_config(model=str(tiny_model_dir), dataset=str(toy_data), precision="fp32", max_length=32)
    cli = prepare(cfg).model
    torch.manual_seed(cfg.seed)
    api = load_model_for_sequence_classification(str(tiny_model_dir), 2, {0: "negative", 1: "positive"})
    heads = head_module_names(api)  # the new classifier, and the pooler the checkpoint lacks
    lora = LoraConfig(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"], modules_to_save=heads)
    prepare_model(api, lora, precision="fp32")
    assert preparation(api) == preparation(cli) and preparation(api).first_token_layer
    assert cli.state_dict().keys() == api.state_dict().keys()
    for name, tensor in cli.state_dict().items():
        torch.testing.assert_close(api.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    batch = {"input_ids": torch.randint(5, 1000, (4, 12)), "labels": torch.tensor([0, 1, 1, 0])}
    results = []
    for model in (cli, api):
        torch.manual_seed(3)  # the same dropout masks
        model.train()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 4
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=0, msg=name)


def test_prepare_model_for_full_finetuning_and_the_model_s_own_kernels():
    from conftest import tiny_bert_cls
    from loratune import preparation, prepare_model
    from loratune.kernels import LeanDropout

    model = prepare_model(tiny_bert_cls(), None, precision="bf16", kernels="torch")
    assert all(p.requires_grad for p in model.parameters())
    done = preparation(model)
    assert (done.kernels, done.lean_attention, done.lean_dropouts, done.frozen_linears_stored) == ("torch", False, 0, 0)
    assert not any(isinstance(m, LeanDropout) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # nothing frozen, nothing stored in bf16


def test_prepare_model_checks_its_arguments():
    import pytest

    from conftest import tiny_bert_cls
    from loratune import prepare_model

    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        prepare_model(tiny_bert_cls(), None, precision="auto")
    with pytest.raises(ValueError, match="kernels must be one of lean, torch"):
        prepare_model(tiny_bert_cls(), None, kernels="fast")


def test_activation_checkpointing_is_enabled_without_a_future_warning():
    """transformers 5.24 renamed gradient_checkpointing_enable; prepare_model uses the new name where it exists."""
    import warnings

    from conftest import tiny_bert_cls
    from loratune import LoraConfig, prepare_model

    model = tiny_bert_cls()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_model(model, LoraConfig(r=2, target_modules=["query"]), precision="fp32", gradient_checkpointing=True)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
