"""Token classification (NER): word-piece alignment, entity scoring, character spans, PEFT round trips,
and the whole command line (train -> eval -> predict) on a tiny CoNLL file."""

from __future__ import annotations

import copy
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import peft
import pytest
import torch

from conftest import TINY_BERT, tiny_bert_cls
from helpers import one_line_error, run, train_args
from loratune import LoraConfig, add_lora, load_adapter, save_adapter
from loratune.cli import main
from loratune.data.tagging import load_tagging
from loratune.errors import LoratuneError
from loratune.models import load_tokenizer
from loratune.tasks import TASKS, get_task, task_for_peft_type
from loratune.tasks.token_cls import (
    AUTO_CLASS,
    TASK_TYPE,
    EntityMetrics,
    TokenClsTask,
    TokenCollator,
    align_labels,
    entity_scores,
    entity_spans,
    format_entities,
    format_entity_report,
    predict_entities,
    split_words,
    tokenize_words,
)


def test_registered_with_its_peft_type_class_and_metric() -> None:
    task = get_task("token_cls")
    assert "token-cls" in TASKS and task.name == "token-cls"
    assert (
        (task.peft_task_type, task.auto_class)
        == (TASK_TYPE, AUTO_CLASS)
        == ("TOKEN_CLS", "AutoModelForTokenClassification")
    )
    assert task.metric.name == "f1" and task.metric.higher_is_better
    assert task.summary_metrics == ("f1", "precision", "recall")
    assert task_for_peft_type("TOKEN_CLS").name == "token-cls"


# ------------------------------------------------------------------------------------ alignment
def test_align_first_sub_token_and_label_all_tokens() -> None:
    # [CLS] Black ##burn visits Bonn [SEP]: word 0 has two pieces
    word_ids = [None, 0, 0, 1, 2, None]
    tags = [2, 0, 1]  # B-PER, O, B-LOC
    assert align_labels(word_ids, tags) == [-100, 2, -100, 0, 1, -100]
    inner = [3, 0, 4]  # I-PER, O, I-LOC
    assert align_labels(word_ids, tags, inner) == [-100, 2, 3, 0, 1, -100]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


def test_tokenize_words_on_the_real_tokenizer(tokenizer, tmp_path) -> None:
    (tmp_path / "a.conll").write_text("Blackburnshire B-LOC\nis O\nnice O\n\nx O\n")
    for all_tokens in (False, True):
        data = load_tagging(
            train_file=str(tmp_path / "a.conll"),
            eval_file=str(tmp_path / "a.conll"),
            val_size=0,
            label_all_tokens=all_tokens,
        )
        row = tokenize_words(data.train, tokenizer, 32)[0]
        pieces = tokenizer.convert_ids_to_tokens(row["input_ids"])
        assert pieces[:4] == ["[CLS]", "blackburn", "##shire", "is"]
        i_loc = data.labels.index("I-LOC") if "I-LOC" in data.labels else data.labels.index("B-LOC")
        second = i_loc if all_tokens else -100
        assert row["labels"] == [-100, data.labels.index("B-LOC"), second, 0, 0, -100]
        assert row["length"] == 6


def test_words_past_max_length_are_counted_and_warned_once(tokenizer, caplog) -> None:
    import datasets

    ds = datasets.Dataset.from_dict(
        {"tokens": [["a"] * 20, ["b"] * 3, ["c"] * 30], "tags": [[0] * 20, [0] * 3, [0] * 30]}
    )
    with caplog.at_level("WARNING", logger="loratune"):
        out = tokenize_words(ds, tokenizer, 10)  # 8 words fit between [CLS] and [SEP]
    assert max(out["length"]) == 10
    warned = [r.getMessage() for r in caplog.records if "past --max-length" in r.getMessage()]
    assert warned == [
        "34 words in 2 of 3 sentences lie past --max-length 10 (or have no tokens) and are left out "
        "of training and scoring; raise --max-length to keep them"
    ]


def test_collator_pads_labels_with_minus_100(tokenizer) -> None:
    collate = TokenCollator(tokenizer, pad_to_multiple_of=8)
    batch = collate(
        [
            {"input_ids": [101, 5, 102], "attention_mask": [1, 1, 1], "labels": [-100, 1, -100], "length": 3},
            {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": [-100, -100], "length": 2},
        ]
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (2, 8)
    assert batch["labels"][0].tolist() == [-100, 1] + [-100] * 6


# ------------------------------------------------------------------------------------ scoring
def test_entity_scores_by_hand() -> None:
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    y_pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold entities: PER(0-1), LOC(3) | ORG(0), PER(2)          -> 4
    # predicted:     PER(0-1), ORG(3) | ORG(0)                  -> 3
    # exact matches: PER(0-1), ORG(0)                           -> 2
    # precision 2/3, recall 2/4 = 1/2, F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    # PER: 1 of 1 predicted right, 1 of 2 found -> P 1, R 1/2, F1 2/3
    # LOC: none predicted, 1 gold               -> P 0, R 0, F1 0
    # ORG: 1 of 2 predicted right, 1 of 1 found -> P 1/2, R 1, F1 2/3
    m = entity_scores(y_true, y_pred)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(4 / 7) and m["entities"] == 4
    assert m["per_type"]["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_type"]["LOC"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["per_type"]["ORG"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    json.dumps(m)


def test_a_partial_entity_is_wrong_and_plain_tags_score_as_inside_tags() -> None:
    assert entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    # plain tags (IO scheme): a run of one type is one entity
    m = entity_scores([["PER", "PER", "O", "LOC"]], [["PER", "PER", "O", "PER"]])
    assert (m["precision"], m["recall"], m["entities"]) == (0.5, 0.5, 2)


def test_metrics_read_words_at_first_sub_tokens_and_weight_the_loss() -> None:
    labels = ["O", "B-PER", "I-PER"]
    metrics = EntityMetrics(labels)
    batch_labels = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 0, 1, -100, -100, -100]])
    logits = torch.zeros(2, 6, 3)
    logits[0, :, 1] = 1  # predicts B-PER everywhere: words B-PER B-PER B-PER
    logits[1, :, 0] = 1  # O everywhere
    metrics.update(SimpleNamespace(logits=logits, loss=torch.tensor(2.0)), {"labels": batch_labels})
    m = metrics.compute()
    # gold: PER(0-1) in row 0, PER(1) in row 1 -> 2; predicted: PER(0), PER(1), PER(2) -> 3; right: none
    assert (m["entities"], m["f1"], m["num_examples"], m["num_words"]) == (2, 0.0, 2, 5)
    assert m["loss"] == pytest.approx(2.0)
    text = format_entity_report(m)
    assert text.startswith("entity F1  0.0000  (precision 0.0000, recall 0.0000; micro over 2 entities")
    assert re.search(r"\nPER    +0\.0000  0\.0000  0\.0000        2\nmicro ", text)


# ------------------------------------------------------------------------------------ spans
@pytest.mark.parametrize(
    "text,tags,expected",
    [
        (
            "Angela Merkel visited Paris.",
            ["B-PER", "I-PER", "O", "B-LOC", "O"],
            [("PER", "Angela Merkel", 0, 13), ("LOC", "Paris", 22, 27)],
        ),
        (
            "Müller traveled to São Paulo.",
            ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"],
            [("PER", "Müller", 0, 6), ("LOC", "São Paulo", 19, 28)],
        ),
        ("  Apple,Inc. ", ["B-ORG", "I-ORG", "I-ORG", "I-ORG"], [("ORG", "Apple,Inc.", 2, 12)]),
        (
            "Jean-Luc  O'Neil\tin\nZürich",
            ["B-PER", "I-PER", "O", "B-LOC"],
            [("PER", "Jean-Luc  O'Neil", 0, 16), ("LOC", "Zürich", 20, 26)],
        ),
        ("東京 に 行く", ["B-LOC", "I-LOC", "O", "O", "O"], [("LOC", "東京", 0, 2)]),  # 東 京 に 行 く
        ("Bonn Berlin", ["B-LOC", "B-LOC"], [("LOC", "Bonn", 0, 4), ("LOC", "Berlin", 5, 11)]),
        ("in Bonn", ["O", "I-LOC"], [("LOC", "Bonn", 3, 7)]),  # IOB1: an entity may start with I-
        ("", [], []),
    ],
)
def test_entity_spans_are_exact_substrings_of_the_input(text, tags, expected) -> None:
    words = split_words(text)
    assert len(words) == len(tags), words
    assert all(text[s:e] == w for w, s, e in words)
    found = entity_spans(text, [(s, e) for _, s, e in words], tags, [0.9] * len(tags))
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in found] == expected
    assert all(text[e["start"] : e["end"]] == e["text"] and e["confidence"] == pytest.approx(0.9) for e in found)


def test_split_words_takes_each_cjk_ideograph_as_a_word() -> None:
    """Scripts without spaces are split per ideograph, as BERT's tokenizer does, so an entity can be tagged alone."""
    text = "我在北京见了Angela 東京タワー"
    words = split_words(text)
    assert [w for w, _, _ in words] == ["我", "在", "北", "京", "见", "了", "Angela", "東", "京", "タワー"]
    assert all(text[s:e] == w for w, s, e in words)


def test_split_words_separates_punctuation() -> None:
    assert [w for w, _, _ in split_words("U.S. (Reuters) -- it's 3,5%!")] == [
        "U",
        ".",
        "S",
        ".",
        "(",
        "Reuters",
        ")",
        "-",
        "-",
        "it's",
        "3",
        ",",
        "5",
        "%",
        "!",
    ]


def test_format_entities_one_line() -> None:
    record = {
        "text": "Angela Merkel visited Paris",
        "entities": [
            {"type": "PER", "text": "Angela Merkel", "start": 0, "end": 13, "confidence": 0.981},
            {"type": "LOC", "text": "Paris", "start": 22, "end": 27, "confidence": 0.95},
        ],
    }
    assert format_entities(record) == (
        'PER "Angela Merkel" [0:13] 0.98; LOC "Paris" [22:27] 0.95  "Angela Merkel visited Paris"'
    )
    assert format_entities({"text": "nothing", "entities": []}) == '(no entities)  "nothing"'


def tiny_bert_tokens(num_labels: int, vocab: int = 30522, seed: int = 0):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, **TINY_BERT, max_position_embeddings=64, num_labels=num_labels)
    return BertForTokenClassification(cfg).eval()


def test_predict_entities_spans_on_a_random_model(tokenizer) -> None:
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    texts = ["Müller traveled to São Paulo.", "  Apple,Inc. ", "", "a " * 100]
    records = predict_entities(tiny_bert_tokens(len(labels)), tokenizer, texts, labels, max_length=16, batch_size=3)
    assert [r["text"] for r in records] == texts and records[2]["entities"] == []
    for r in records:
        for e in r["entities"]:
            assert r["text"][e["start"] : e["end"]] == e["text"] and 0 < e["confidence"] <= 1
            assert e["type"] in ("PER", "LOC")


# ------------------------------------------------------------------------------------ PEFT round trips
def _train_steps(model, tokens, steps: int = 3) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    labels = tokens % 3
    for _ in range(steps):
        model(tokens, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def test_loratune_token_adapter_loads_in_peft_with_same_logits(tmp_path, tokens) -> None:
    base = tiny_bert_tokens(3, vocab=120)
    model = add_lora(
        copy.deepcopy(base),
        LoraConfig(
            r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="TOKEN_CLS"
        ),
    )
    _train_steps(model, tokens)
    expected = model(tokens).logits
    assert expected.shape == (*tokens.shape, 3)
    save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and config["modules_to_save"] == ["classifier"]
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ad")).eval()
    assert (pm(tokens).logits - expected).abs().max() <= 1e-5


def test_peft_token_adapter_loads_in_loratune_with_same_logits(tmp_path, tokens) -> None:
    base = tiny_bert_tokens(3, vocab=120)
    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="TOKEN_CLS"),
    )
    _train_steps(pm, tokens)
    expected = pm(tokens).logits
    pm.save_pretrained(str(tmp_path / "peft"))
    model = load_adapter(copy.deepcopy(base), tmp_path / "peft").eval()
    assert (model(tokens).logits - expected).abs().max() <= 1e-5


def test_peft_token_adapter_through_load_artifact(tmp_path, tiny_model_dir, tokenizer) -> None:
    """A PEFT-saved TOKEN_CLS adapter (no loratune.json) loads as a token-cls artifact with its head."""
    from transformers import AutoModelForTokenClassification

    from loratune.artifacts import load_artifact

    torch.manual_seed(0)
    base = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=3)
    pm = peft.get_peft_model(
        base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="TOKEN_CLS")
    )
    enc = tokenizer(["Peter visits Bonn"], return_tensors="pt")
    _train_steps(pm, enc["input_ids"])
    expected = pm(**enc).logits
    pm.save_pretrained(str(tmp_path / "peft"))
    loaded = load_artifact(tmp_path / "peft", model=str(tiny_model_dir))
    assert loaded.info["task"] == "token-cls" and loaded.labels == ["0", "1", "2"]
    assert (loaded.model(**enc).logits - expected).abs().max() <= 1e-5


def _sparse_tag_batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Batches like sparse-entity NER: padded rows, -100 at special tokens and padding, ~8 % entity tags."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(3, 120, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9:], mask[3, 5:] = 0, 0
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.08, torch.randint(1, 5, ids.shape, generator=g), 0)
        labels[:, 0] = -100
        labels[mask == 0] = -100
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


@pytest.mark.parametrize("kernels", ["lean", "torch"])
def test_loratune_trains_a_token_classifier_step_for_step_like_peft(kernels) -> None:
    """The same start, batches, AdamW groups and schedule give PEFT's loss at every step and its weights after:
    the engine (lean kernels or not) is not why a token-cls run learns less than PEFT's."""
    from transformers import BertConfig, BertForTokenClassification

    from loratune.prepare import prepare_model
    from loratune.train.loop import build_optimizer, linear_schedule_with_warmup

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        **TINY_BERT,
        max_position_embeddings=64,
        num_labels=5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    base = BertForTokenClassification(config)
    targets = ["query", "key", "value", "dense"]
    pm = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="TOKEN_CLS"),
    )
    lt = prepare_model(
        copy.deepcopy(base),
        LoraConfig(r=4, alpha=8, target_modules=targets, modules_to_save=["classifier"], task_type="TOKEN_CLS"),
        kernels=kernels,
    )
    theirs = {n.removeprefix("base_model.model."): p for n, p in pm.named_parameters() if p.requires_grad}
    ours = {n: p for n, p in lt.named_parameters() if p.requires_grad}
    assert sorted(ours) == sorted(theirs)
    with torch.no_grad():
        for name, p in ours.items():
            p.copy_(theirs[name] if ".lora_B." not in name else torch.randn_like(p) * 0.02)
            theirs[name].copy_(p)  # B non-zero too, so every gradient path is compared from step 1
    losses = {}
    for key, model in (("peft", pm), ("loratune", lt)):
        model.train()
        opt = build_optimizer(model, 2e-3, 0.01)
        sched = linear_schedule_with_warmup(opt, 2, 12)
        losses[key] = []
        for batch in _sparse_tag_batches(12):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            losses[key].append(float(loss.detach()))
    assert losses["loratune"] == pytest.approx(losses["peft"], abs=1e-5)
    assert losses["peft"][-1] < losses["peft"][0]  # it learned: the comparison is of a moving model
    for name, p in ours.items():
        assert torch.allclose(p, theirs[name], atol=1e-5), name


def test_fastpath_leaves_a_token_classifier_whole() -> None:
    from transformers import BertForTokenClassification

    from loratune.fastpath import use_lean_kernels

    model = BertForTokenClassification(tiny_bert_cls().config)
    assert not use_lean_kernels(model).first_token_layer


# ------------------------------------------------------------------------------------ the command line
PEOPLE = ["Peter", "Angela", "Maria", "John", "Anna"]
PLACES = ["Bonn", "Paris", "Berlin", "London", "Rome"]
FILLER = ["visited", "likes", "and", "the", "in", "today", "went", "to"]


def toy_conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 3)]
        words.insert(rng.randint(0, 3), (rng.choice(PEOPLE), "B-PER"))
        words.insert(rng.randint(0, 4), (rng.choice(PLACES), "B-LOC"))
        sentences.append("\n".join(f"{w} NN O {t}" for w, t in words))
    path.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(sentences) + "\n")
    return path


def conll_train_args(model: Path, train: Path, test: Path, out: Path, *extra: str) -> list[str]:
    """The tiny run's ``train --task token-cls`` on the CoNLL files ``train`` and ``test``."""
    files = ["--task", "token-cls", "--train-file", str(train), "--eval-file", str(test)]
    return train_args(model, None, out, *files, *extra)


def test_train_eval_predict_on_a_tiny_conll_file(tiny_model_dir, tmp_path, capsys) -> None:
    train, test = toy_conll(tmp_path / "train.conll", 48, 1), toy_conll(tmp_path / "test.conll", 16, 2)
    out = tmp_path / "run"
    code, stdout, err = run(
        conll_train_args(
            tiny_model_dir,
            train,
            test,
            out,
            "--epochs",
            "2",
            "--label-all-tokens",
            "--target-modules",
            "query,key,value",
        ),
        capsys,
    )
    assert code == 0, err
    assert "f1 (best)" in stdout and "precision (test)" in stdout and "recall (test)" in stdout
    info = json.loads((out / "adapter" / "loratune.json").read_text())
    assert info["task"] == "token-cls" and info["labels"] == ["O", "B-LOC", "B-PER"]
    assert info["label_all_tokens"] is True and info["data"]["label_all_tokens"] is True
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "TOKEN_CLS" and config["modules_to_save"] == ["classifier"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "f1" and summary["val_examples"] == 5 and summary["eval_examples"] == 16
    assert set(summary["test"]["per_type"]) <= {"PER", "LOC"} and 0 <= summary["test"]["f1"] <= 1
    assert (out / "curves.png").stat().st_size > 1000

    code, stdout, err = run(["eval", "--adapter", str(out / "adapter")], capsys)
    assert code == 0, err
    assert f"entity F1  {summary['test']['f1']:.4f}" in stdout and "type   precision  recall      F1  support" in stdout
    code, stdout, err = run(["eval", "--adapter", str(out / "adapter"), "--eval-file", str(test), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["f1"] == pytest.approx(summary["test"]["f1"])

    texts = ["Angela visited Paris.", "  Müller,  in São Paulo "]
    code, stdout, err = run(["predict", "--adapter", str(out / "adapter"), *texts], capsys)
    assert code == 0, err
    assert len(stdout.splitlines()) == 2
    assert all(
        re.fullmatch(r'(\(no entities\)|(PER|LOC) ".+?" \[\d+:\d+\] [01]\.\d\d(; .+)?)  ".*"', x)
        for x in stdout.splitlines()
    )
    code, stdout, err = run(["predict", "--adapter", str(out / "adapter"), "--json", *texts], capsys)
    records = [json.loads(x) for x in stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    for r in records:
        assert all(r["text"][e["start"] : e["end"]] == e["text"] for e in r["entities"])


def test_full_fine_tuning_of_a_token_classifier(tiny_model_dir, tmp_path, capsys) -> None:
    train, test = toy_conll(tmp_path / "train.conll", 24, 1), toy_conll(tmp_path / "test.conll", 8, 2)
    out = tmp_path / "full"
    code, _, err = run(
        conll_train_args(tiny_model_dir, train, test, out, "--method", "full", "--epochs", "1", "--val-size", "0"),
        capsys,
    )
    assert code == 0, err
    code, stdout, err = run(["eval", "--adapter", str(out / "model")], capsys)
    assert code == 0 and "entity F1" in stdout, err
    code, stdout, err = run(["predict", "--adapter", str(out / "model"), "--json", "Peter in Rome"], capsys)
    assert code == 0 and json.loads(stdout)["text"] == "Peter in Rome", err


@pytest.mark.parametrize(
    "make,extra,needles",
    [
        (lambda d: (d / "t.conll").write_text("Peter B-PER\nvisits O\nBonn\n"), [], ["t.conll:3", "its tag"]),
        (
            lambda d: (d / "t.jsonl").write_text(
                '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n'
            ),
            [],
            ["t.jsonl line 2", "2 words"],
        ),
        (
            lambda d: (d / "t.json").write_text('[{"tokens": "a b", "tags": ["O", "O"]}]'),
            [],
            ["t.json record 0", "must be a list"],
        ),
        (
            lambda d: (d / "t.jsonl").write_text('{"words": ["a"], "tags": ["O"]}\n'),
            ["--text-column", "tokens"],
            ["'tokens' not found in t.jsonl"],
        ),
        (lambda d: (d / "t.conll").write_text("-DOCSTART- O\n\n"), [], ["t.conll has no sentences"]),
        (
            lambda d: (d / "t.conll").write_text("a O\n"),
            ["--label-all-tokens", "--task", "seq-cls"],
            ["--label-all-tokens is for --task token-cls"],
        ),
    ],
    ids=["conll-one-column", "jsonl-lengths", "json-not-list", "jsonl-column", "no-sentences", "seq-cls-flag"],
)
def test_bad_tagged_data_is_one_line_exit_2_and_writes_nothing(
    make, extra, needles, tiny_model_dir, tmp_path, capsys
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    (path,) = data.iterdir()
    out = tmp_path / "out"
    code, stdout, err = run(conll_train_args(tiny_model_dir, path, path, out, *extra), capsys)
    one_line_error(code, err, *needles)
    assert not out.exists() and not stdout


def test_eval_on_tags_the_adapter_does_not_know(tiny_model_dir, tmp_path, capsys) -> None:
    train, test = toy_conll(tmp_path / "train.conll", 16, 1), toy_conll(tmp_path / "test.conll", 8, 2)
    out = tmp_path / "run"
    assert run(conll_train_args(tiny_model_dir, train, test, out, "--epochs", "1", "--val-size", "0"), capsys)[0] == 0
    other = tmp_path / "other.conll"
    other.write_text("Siemens B-ORG\nsells O\n")
    code, _, err = run(["eval", "--adapter", str(out / "adapter"), "--eval-file", str(other)], capsys)
    one_line_error(code, err, "other.conll has tags that the adapter knows not: 'B-ORG'", "B-LOC, B-PER")


def test_tweets_demo_is_refused_for_token_cls(tiny_model_dir, tmp_path, capsys) -> None:
    code, _, err = run(
        ["train", "--task", "token-cls", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o")], capsys
    )
    one_line_error(code, err, "tweets is text-classification data")


def test_train_help_names_token_cls_and_label_all_tokens(capsys) -> None:
    code, stdout, _ = run(["train", "--help"], capsys)
    text = " ".join(stdout.split())
    assert code == 0 and "token-cls" in text and "--label-all-tokens" in text
    assert "{seq-cls,token-cls,causal-lm}" in text


def test_shared_conll2003_trains_two_steps(shared_data, tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "conll"
    code = main(
        [
            "train",
            "--task",
            "token-cls",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(shared_data / "conll2003"),
            "--output",
            str(out),
            "--train-size",
            "64",
            "--eval-size",
            "32",
            "--max-steps",
            "2",
            "--max-length",
            "64",
            "--batch-size",
            "8",
            "--precision",
            "fp32",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_examples"] == 64 and summary["eval_examples"] == 32
    assert summary["val_examples"] == 3250 and summary["selection"].startswith("the dataset's validation split")
    assert summary["labels"][0] == "O" and len(summary["labels"]) == 9


def test_seq_cls_still_refuses_unknown_task_names() -> None:
    with pytest.raises(LoratuneError, match="token-cls"):
        get_task("ner")


def test_curves_show_entity_f1() -> None:
    from loratune.train.plots import training_figure

    records = [{"type": "train", "step": s, "epoch": s / 4, "loss": 1.0 / s} for s in range(1, 9)]
    evals = [{"type": "eval", "step": 4 * e, "epoch": float(e), "f1": f, "precision": f, "recall": f, "loss": 0.3}
             for e, f in ((1, 0.6), (2, 0.7))]  # fmt: skip
    fig = training_figure(records + evals, best=evals[1])
    eval_ax = fig.axes[1]
    assert next(line.get_label() for line in eval_ax.get_lines() if not line.get_label().startswith("_")) == "F1"
    assert [t.get_text() for t in eval_ax.texts] == ["kept: F1 0.700"]


def test_token_cls_trains_with_its_measured_defaults_unless_told_otherwise() -> None:
    from loratune.train.config import build_config

    cfg = build_config(task="token-cls", train_file="t.conll")
    assert (cfg.lr, cfg.r, cfg.target_modules, cfg.epochs) == (1e-3, 16, "all-linear", 3)
    cfg = build_config(task="token-cls", train_file="t.conll", r=4, target_modules="query,value")
    assert (cfg.lr, cfg.r, cfg.target_modules) == (1e-3, 4, ["query", "value"])
    assert build_config(task="token-cls", train_file="t.conll", method="full").lr == 1e-4
    assert build_config(train_file="t.csv").lr is None  # seq-cls keeps its own


def test_compare_infers_token_cls_and_reports_entity_f1(tiny_model_dir, tmp_path, capsys) -> None:
    """compare end to end on CoNLL files: the task is inferred, each method's F1 is in the table."""
    train, test = toy_conll(tmp_path / "train.conll", 24, 1), toy_conll(tmp_path / "test.conll", 8, 2)
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--train-file", str(train), "--eval-file", str(test),
            "--output", str(out), "--max-length", "32", "--batch-size", "8", "--precision", "fp32", "--no-progress",
            "--max-steps", "3", "--val-size", "4"]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "task: token-cls (inferred: train.conll has one token and its tag per line" in stdout
    result = json.loads((out / "comparison.json").read_text())
    rows = {row["measure"]: row for row in result["rows"]}
    assert list(rows)[-4:] == ["test F1", "test precision", "test recall", "validation F1"]
    for method in ("full", "lora"):
        summary = json.loads((out / method / "summary.json").read_text())
        assert summary["task"] == "token-cls" and rows["test F1"][method] == summary["test"]["f1"]
    assert rows["test F1"]["diff_pt"] == pytest.approx(100 * (rows["test F1"]["lora"] - rows["test F1"]["full"]))
    lora_config = json.loads((out / "lora" / "adapter" / "adapter_config.json").read_text())
    assert lora_config["task_type"] == "TOKEN_CLS" and lora_config["r"] == 16  # the task's LoRA default
    assert "| test F1 |" in (out / "comparison.md").read_text()


def test_a_run_whose_every_f1_is_zero_says_so_in_one_line():
    task = TokenClsTask()
    line = task.learned_nothing([{"f1": 0.0, "loss": 0.28}, {"f1": 0.0, "loss": 0.19}])
    assert line is not None and "\n" not in line
    assert "entity F1 was 0.0" in line and "--lr" in line and "--epochs" in line
    assert task.learned_nothing([{"f1": 0.0}, {"f1": 0.01}]) is None
    assert task.learned_nothing([]) is None


def test_a_zero_width_word_is_not_warned_as_cut(tokenizer, caplog) -> None:
    """A word of zero-width characters has no token; only a text that fills --max-length is cut."""
    labels = ["O", "B-PER"]
    net = tiny_bert_tokens(len(labels))
    with caplog.at_level("WARNING", logger="loratune"):
        predict_entities(net, tokenizer, ["Alice met \u200b\u200d Bob"], labels, max_length=32, batch_size=1)
        assert not [r for r in caplog.records if "run past --max-length" in r.getMessage()]
        predict_entities(net, tokenizer, ["a " * 100], labels, max_length=16, batch_size=1)
    assert len([r for r in caplog.records if "run past --max-length" in r.getMessage()]) == 1
