import pandas as pd
import pytest

from tunefuse import demo

TINY = ["data.options={n_train: 120, n_test: 40}",
        "members[0].params={epochs: 1, config_overrides: {num_hidden_layers: 1}}",
        "members[1].params={config_overrides: {num_hidden_layers: 1}}",
        "members[2].params.config_overrides={num_hidden_layers: 1}"]


@pytest.mark.slow
def test_demo_runs_the_reviews_example_end_to_end(tmp_path, capsys):
    """`make demo` = tunefuse fit examples/reviews.yaml: members of three backbones, fusions, leaderboard, the
    one-line verdict (chosen model, lift over the best member with its interval, cost), report."""
    result = demo.main([x for s in TINY + [f"output={tmp_path / 'run'}"] for x in ("--set", s)])
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert {"minilm-lpft", "mpnet-probe", "smollm2-probe", "tfidf", "stacking", "ensemble_selection",
            "vote_soft"} <= set(board["model"])
    assert result.verdict.chosen in set(board["model"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("verdict: ")]
    assert len(lines) == 1 and f"Ship {result.verdict.chosen!r}" in lines[0]
    if result.verdict.kind == "member":
        assert "best fusion by validation" in lines[0]
    else:  # a fusion: its lift with the interval, "within noise" or "a real lift", its cost against the member
        assert "95 % paired bootstrap" in lines[0] and "x the member's inference time" in lines[0]
        assert ("within noise" in lines[0]) == result.verdict.within_noise
    assert (tmp_path / "run" / "verdict.txt").read_text().strip() == lines[0][len("verdict: "):]
    assert (tmp_path / "run" / "report.html").is_file()
