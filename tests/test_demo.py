import pytest

from tunefuse import demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_writes_the_report(tmp_path, capsys):
    board = demo.main(["--train", "160", "--test", "96", "--epochs", "1", "--layers", "1", "--out",
                       str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert {"minilm_full", "minilm_head", "tfidf_logreg", "stacking", "greedy_soup"} <= set(board["model"])
    assert "test_macro_f1" in board.columns and "best by validation" in out
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"leaderboard.csv", "leaderboard.png",
                                                                 "learning_curves.png", "calibration.png"}
