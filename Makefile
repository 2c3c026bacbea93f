# make        set up (.venv, pinned packages, Debian libraries) and build model_repository/ (default: yolov4-tiny)
# make test   run the test suite (starts real tritonservers on free loopback ports), slow cases excluded
# make test-slow  the slow cases (several model builds each; CI runs them after make test)
# make serve  build if needed, then serve model_repository/ on 127.0.0.1 (gRPC 8001, HTTP 8000, metrics 8002)
# make bench  served ensemble (perf_analyzer) vs in-process baselines -> bench/results/
# make tune   measure configurations and write the best one back into model_repository/
# make soak   load + mixed bad input + faults against the embedded server, summary table
# make plan-docker  (GPU host with Docker) TensorRT plan built and served by the NGC Triton image
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REPO   := model_repository
SOURCES := build_repo.py $(wildcard yolotriton/*.py yolotriton/*/*.py) $(wildcard templates/*.j2 templates/*/*.py)

.PHONY: all setup repo test test-slow serve bench tune soak plan-docker clean
all: repo

setup: $(STAMP)
$(STAMP): requirements.txt pyproject.toml scripts/setup.sh scripts/install_perf_analyzer.sh
	./scripts/setup.sh

repo: $(REPO)/yolov4/config.pbtxt
$(REPO)/yolov4/config.pbtxt: $(STAMP) $(SOURCES)
	$(PY) build_repo.py --output $(REPO)

test: $(STAMP)
	$(PY) -m pytest -v -rs -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -v -rs -m slow --durations=15

serve: repo
	$(VENV)/bin/tritonserver --model-repository $(REPO)

bench: repo
	$(PY) bench/run.py --repository $(REPO)

tune: repo
	$(PY) bench/tune.py --repository $(REPO)

soak: repo
	$(PY) bench/soak.py --repository $(REPO)

# On the GPU host that will serve: TensorRT repository whose plan is built by trtexec in the NGC image.
plan-docker: $(STAMP)
	$(PY) build_repo.py --output $(REPO) --target tensorrt --plan-builder docker
	cd $(REPO) && ./build_plan.sh

clean:
	find $(REPO) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
