import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray hub call fails fast instead of hanging
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tunefuse.datasets import load_reviews  # noqa: E402

# Real MiniLM-L6 weights cut to their first pretrained layer: real tokenizer, real embeddings, seconds per fit.
TINY = dict(backbone="minilm-l6", config_overrides={"num_hidden_layers": 1}, verbose=0)


@pytest.fixture(scope="session")
def reviews():
    """128 real training reviews and 64 test reviews (label: Rating >= 4)."""
    return load_reviews(n_train=128, n_test=64, seed=0)
