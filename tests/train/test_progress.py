import io

from loratune.train.progress import format_postfix, progress_bar, set_progress_postfix


def test_plain_mode_prints_every_pct_without_carriage_returns():
    buf = io.StringIO()  # not a TTY -> plain lines
    with progress_bar(100, "train", file=buf, every_pct=25) as bar:
        assert bar.bar is None
        for _ in range(100):
            set_progress_postfix(bar, loss=0.5, lr=5e-4, examples_per_s=12.0)
            bar.update()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("train:  25% 25/100")
    assert lines[-1].startswith("train: 100% 100/100")
    assert "loss=0.5000" in lines[-1] and "lr=5.00e-04" in lines[-1] and "ex/s=12.0" in lines[-1]
    assert "\r" not in buf.getvalue()


def test_plain_final_line_only_and_silent():
    buf = io.StringIO()
    bar = progress_bar(10, "eval", file=buf, every_pct=None)
    bar.update(10)
    bar.close()
    bar.close()  # idempotent
    assert len(buf.getvalue().splitlines()) == 1
    buf2 = io.StringIO()
    with progress_bar(10, "x", file=buf2, silent=True) as bar:
        bar.update(10)
        bar.write("hello")
    assert buf2.getvalue() == ""


def test_forced_tqdm_bar_and_resume_initial():
    buf = io.StringIO()
    with progress_bar(10, "train", file=buf, enabled=True, initial=4) as bar:
        assert bar.bar is not None
        bar.update(6)
        bar.set_metrics(loss=0.25)
    assert "10/10" in buf.getvalue() and "loss=0.2500" in buf.getvalue()


def test_format_postfix():
    assert format_postfix(loss=1.23456, lr=None, examples_per_s=3.0, acc=0.9) == {
        "loss": "1.2346",
        "ex/s": "3.0",
        "acc": "0.9",
    }
