"""Sequence-classification scoring and how predictions are shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loratune.errors import DataError
from loratune.tasks import (
    classification_metrics,
    format_confusion_matrix,
    format_prediction,
    predict_proba,
    prediction_dict,
)
from loratune.tasks.seq_cls import AUTO_CLASS, TASK_TYPE, SeqClsTask


def test_metrics_by_hand() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(preds, labels, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: 0 -> p 1/2 r 1/2 = 0.5; 1 -> p 2/3 r 1 = 0.8; 2 -> p 1 r 1/2 = 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["num_examples"] == 6
    json.dumps(m)  # plain Python types


def test_metrics_accept_logits_tensors_and_absent_classes() -> None:
    logits = torch.tensor([[2.0, 0.1], [0.3, 0.9], [1.0, 0.0]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1]), 2)
    assert m["accuracy"] == pytest.approx(2 / 3)
    m = classification_metrics(np.array([0, 0]), np.array([0, 0]), 3)  # classes 1, 2 never seen
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert m["macro_f1"] == 1.0  # averaged over the classes in the data, not zeros for absent ones
    m = classification_metrics(np.array([0, 2, 0, 0]), np.array([0, 0, 0, 0]), 3)  # one wrong guess of 2
    assert m["macro_f1"] == pytest.approx(2 * 0.75 / 1.75)  # class 0: precision 1, recall 3/4
    with pytest.raises(DataError, match="2 predictions for 3 labels"):
        classification_metrics([0, 1], [0, 1, 1], 2)
    with pytest.raises(DataError, match="no examples"):
        classification_metrics([], [], 2)


def test_format_confusion_matrix() -> None:
    table = format_confusion_matrix([[480, 20], [31, 469]], ["negative", "positive"])
    lines = table.splitlines()
    assert lines[0].split() == ["true", "\\", "pred", "negative", "positive"]
    assert lines[1].split() == ["negative", "480", "20"]
    assert lines[2].split() == ["positive", "31", "469"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_prediction_line_and_dict() -> None:
    text = "A wonderful,\nmoving film that I would happily watch again and again with my whole family."
    line = format_prediction(text, [0.027, 0.973], ["negative", "positive"])
    assert "\n" not in line
    assert line.startswith('positive (0.973)  [negative 0.027 | positive 0.973]  "A wonderful, moving')
    assert line.endswith('..."')
    d = prediction_dict(text, torch.tensor([0.9, 0.1]), ["negative", "positive"])
    assert d == {
        "text": text,
        "label": "negative",
        "label_id": 0,
        "confidence": pytest.approx(0.9),
        "probs": {"negative": pytest.approx(0.9), "positive": pytest.approx(0.1)},
    }
    json.dumps(prediction_dict("x", np.array([0.5, 0.5], dtype=np.float32), ["a", "b"]))
    with pytest.raises(DataError, match="3 probabilities for 2 labels"):
        format_prediction("x", [0.2, 0.3, 0.5], ["a", "b"])


def test_predict_proba_on_a_tiny_model(tmp_path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    model = BertForSequenceClassification(cfg).train()
    texts = ["good movie", "bad", "movie movie good bad movie"]
    probs = predict_proba(model, tokenizer, texts, batch_size=2)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.training  # mode restored
    one_by_one = np.concatenate([predict_proba(model, tokenizer, [t]) for t in texts])
    assert np.allclose(probs, one_by_one, atol=1e-5)  # padding does not change the answer
    assert predict_proba(model, tokenizer, []).shape == (0, 3)
    assert (TASK_TYPE, AUTO_CLASS) == ("SEQ_CLS", "AutoModelForSequenceClassification")


def test_a_run_that_predicts_one_label_everywhere_says_so_in_one_line():
    task = SeqClsTask()
    one = {"accuracy": 0.6, "confusion_matrix": [[6, 0], [4, 0]]}
    both = {"accuracy": 0.7, "confusion_matrix": [[5, 1], [2, 2]]}
    line = task.learned_nothing([one, one])
    assert line is not None and "\n" not in line and "id 0" in line
    assert task.learned_nothing([one, both]) is None
    other = {"accuracy": 0.4, "confusion_matrix": [[0, 6], [0, 4]]}
    assert task.learned_nothing([one, other]) is None  # it changed its mind: something was learned
    assert task.learned_nothing([]) is None
