# The README's two commands: `make demo` (set up + run the main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bccd ablation clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/ci.txt
	@# jemalloc: the fast, lean allocator `dsod train` uses when it is there (src/dsod/runtime/launch.py); optional
	-@sh .ci/install-jemalloc.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/ci.txt
	$(PY) -m pip install --quiet -c requirements/ci.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dsod demo

# one pytest-xdist worker per core (tests/conftest.py shares the cores' threads between them)
test: $(STAMP)
	$(PY) -m pytest -q -n auto tests

# docs/RESULTS.md: the BCCD recipe (one DDP process per core, dsod.runtime.launch) and the CPU-scale ablation (resumable;
# run `make ablation` once per free core to share the queue).
SHARED ?= ../shared/data
bccd: $(STAMP)
	$(PY) -m dsod train data=$(SHARED)/bccd model=dsod-tiny-bccd augment=light flipud=0.5 \
	    optimizer=adamw lr=5e-3 weight_decay=0.05 no_decay_norm=true schedule=cosine bn_decay=0.99 \
	    batch=16 iterations=650 val_interval=65 workers=0 seed=0 name=bccd-recipe exist_ok=true
	$(PY) -m dsod val data=$(SHARED)/bccd model=runs/bccd-recipe/weights/best.pt \
	    json=runs/bccd-val/metrics.json name=bccd-val exist_ok=true

ablation: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m dsod.experiments ablation data=$(SHARED)/bccd seeds=0,1,2

clean:
	rm -rf $(VENV) build src/*.egg-info
