import pandas as pd
import pytest

from tunefuse import demo


@pytest.mark.slow
def test_demo_runs_the_reviews_example_end_to_end(tmp_path):
    """`make demo` = tunefuse fit examples/reviews.yaml: members, fusions, leaderboard, verdict, report."""
    result = demo.main(["--set", "data.options={n_train: 120, n_test: 40}",
                        "--set", "members[0].params={epochs: 1, config_overrides: {num_hidden_layers: 1}}",
                        "--set", "members[1].params={config_overrides: {num_hidden_layers: 1}}",
                        "--set", f"output={tmp_path / 'run'}"])
    board = pd.read_csv(tmp_path / "run" / "leaderboard.csv")
    assert {"minilm-lpft", "minilm-head", "tfidf", "stacking", "wise_ft"} <= set(board["model"])
    assert result.verdict.chosen in set(board["model"])
    assert (tmp_path / "run" / "report.html").is_file()
