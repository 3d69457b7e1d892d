"""Validation curves from results.csv and the last-quarter plateau rule."""

import pytest

from meddet.engine.curves import LastQuarter, ValPoint, last_quarter, training_cost, val_curve

HEADER = "epoch,iter,loss,lr,mAP,mAP50,AR100,recall,seconds,nonfinite\n"


def _csv(tmp_path, rows):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def _row(epoch, it, m50="", m="", loss="1.0"):
    return f"{epoch},{it},{loss},0.001,{m},{m50},,,1.0,0\n"


def test_curve_keeps_validations_only_and_the_last_row_of_a_repeated_iteration(tmp_path):
    path = _csv(tmp_path, [_row(1, 25), _row(2, 50, "0.1", "0.05"), _row(3, 75),
                           _row(4, 100, "0.2", "0.08"),
                           _row(4, 100, "0.3", "0.09"),  # epoch 4 run again after a resume
                           _row(5, 125, "nan")])
    assert val_curve(path) == [ValPoint(2, 50, 0.1, 0.05), ValPoint(4, 100, 0.3, 0.09)]
    assert val_curve(tmp_path / "missing.csv") == []


def test_last_quarter_starts_at_the_latest_validation_before_three_quarters():
    # every 200 iterations up to 2000: 75 % is 1500, so the quarter starts at 1400
    curve = [ValPoint(e, 25 * e, 0.01 * e) for e in range(8, 81, 8)]
    q = last_quarter(curve)
    assert (q.start_iter, q.end_iter) == (1400, 2000)
    assert q.start == pytest.approx(0.56) and q.end == pytest.approx(0.80)
    assert q.gain_points == pytest.approx(24.0) and not q.plateau
    assert "1400 -> 2000" in q.describe() and "+24.0 points: not a plateau" in q.describe()
    # a validation exactly at 75 % is the start
    curve = [ValPoint(1, 10, 0.5), ValPoint(3, 30, 0.700), ValPoint(4, 40, 0.709)]
    q = last_quarter(curve)
    assert q.start_iter == 30 and q.gain_points == pytest.approx(0.9) and q.plateau
    assert "a plateau" in q.describe()


def test_plateau_threshold_and_round_trip():
    flat = LastQuarter(start_iter=1, end_iter=4, start=0.5, end=0.51)
    assert flat.gain_points == pytest.approx(1.0) and not flat.plateau  # under 1 point only
    falling = LastQuarter(start_iter=1, end_iter=4, start=0.5, end=0.45)
    assert falling.plateau and falling.gain_points == pytest.approx(-5.0)
    assert LastQuarter.from_dict(falling.to_dict()) == falling


def test_too_few_validations_say_nothing():
    assert last_quarter([]) is None
    assert last_quarter([ValPoint(1, 100, 0.5)]) is None
    # both validations after 75 % of the last one's iteration: nothing before the quarter
    assert last_quarter([ValPoint(8, 80, 0.5), ValPoint(10, 100, 0.6)]) is None


def test_pretrain_and_distill_summaries_print_the_last_quarter(capsys):
    from meddet.cli import distill, train

    quarter = LastQuarter(start_iter=1400, end_iter=2000, start=0.770, end=0.806).to_dict()
    base = {"run_dir": "R", "iters": 2000, "best_mAP50": 0.806, "seconds": 1.0,
            "history": [{"mAP": 0.5, "mAP50": 0.806, "recall": 0.99}]}
    train._print_summary([{**base, "last_quarter": quarter}, {**base, "run_dir": "S",
                                                              "last_quarter": None}])
    out = " ".join(capsys.readouterr().out.split())
    assert ("R: val mAP50 over the last quarter (it 1400 -> 2000): 0.770 -> 0.806, +3.6 points: "
            "not a plateau") in out
    assert "S: val mAP50" not in out
    distill._print_summary(train.console, {**base, "student": "R/student.pt",
                                           "time_split": {"teacher": 1.0, "student": 2.0,
                                                          "disc": 0.5},
                                           "last_quarter": quarter})
    assert "val mAP50 over the last quarter (it 1400 -> 2000)" in " ".join(
        capsys.readouterr().out.split())


def test_training_cost_sums_each_epoch_once_and_counts_images_by_the_config_batch(tmp_path):
    (tmp_path / "config.yaml").write_text("train:\n  batch_size: 8\n  epochs: 3\n")
    rows = [_row(1, 25), _row(2, 50, "0.1"), _row(3, 75)]
    rows = [r.replace(",1.0,0\n", f",{sec},0\n") for r, sec in zip(rows, (60.5, 70.0, 50.0))]
    # epoch 2 run again after a resume: its last row (40 s) counts, not the cut one
    rows.insert(2, _row(2, 50, "0.2").replace(",1.0,0\n", ",40.0,0\n"))
    _csv(tmp_path, rows)
    assert training_cost(tmp_path) == {"train_seconds": 150.5, "train_images": 75 * 8}
    (tmp_path / "config.yaml").write_text("train: {}\n")  # no batch size: nothing to say
    assert training_cost(tmp_path) is None
    assert training_cost(tmp_path / "missing") is None
