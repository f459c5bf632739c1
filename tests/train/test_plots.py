import pytest

from loratune.train.plots import plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(epochs, steps_per_epoch, with_eval=True, f1=True):
    recs = []
    step = 0
    for ep in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            recs.append({"type": "train", "step": step, "epoch": ep, "loss": 1.0 / (1 + 0.1 * step), "lr": 1e-3})
        if with_eval:
            ev = {"type": "eval", "step": step, "epoch": ep, "accuracy": 0.7 + 0.05 * ep}
            if f1:
                ev["macro_f1"] = 0.68 + 0.05 * ep
            recs.append(ev)
    return recs


def test_plot_three_epochs(tmp_path):
    out = plot_training_curves(_records(3, 20), tmp_path / "curves.png", title="demo")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_one_epoch_and_no_eval(tmp_path):
    one = plot_training_curves(_records(1, 5, f1=False), tmp_path / "one.png")
    none = plot_training_curves(_records(2, 5, with_eval=False), tmp_path / "noeval.png")
    empty = plot_training_curves([], tmp_path / "empty.png")
    for p in (one, none, empty):
        assert p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 0


def test_plot_eval_loss_fallback(tmp_path):
    recs = [r for r in _records(2, 4, with_eval=False)]
    recs += [{"type": "eval", "epoch": 1, "loss": 2.0}, {"type": "eval", "epoch": 2, "loss": 1.5}]
    assert plot_training_curves(recs, tmp_path / "lm.png").stat().st_size > 0


def test_only_the_epoch_means_and_the_kept_evaluation_are_labelled():
    """Records as the loop writes them: fractional epochs, the epoch's last log at epoch == e + 1.0."""
    from loratune.train.plots import training_figure

    per_epoch, recs = 25, []
    for step in range(1, 3 * per_epoch + 1):
        recs.append({"type": "train", "step": step, "epoch": round(step / per_epoch, 4), "loss": 1.0 / step})
        if step % per_epoch == 0:
            recs.append(
                {
                    "type": "eval",
                    "step": step,
                    "epoch": step / per_epoch,
                    "accuracy": [0.7, 0.8, 0.75][step // per_epoch - 1],
                }
            )
    fig = training_figure(recs, best=recs[-1 - per_epoch - 1])  # the epoch-2 evaluation was kept
    loss_ax, eval_ax = fig.axes
    means = sorted(float(t.get_text()) for t in loss_ax.texts)
    assert len(means) == 3  # one per epoch, not one per logged step
    assert means[-1] == pytest.approx(sum(1.0 / s for s in range(1, 26)) / 25, abs=5e-4)  # epoch 1, as shown
    assert [t.get_text() for t in eval_ax.texts] == ["kept: accuracy 0.800"]
