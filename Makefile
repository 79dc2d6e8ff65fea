# Set-up and main jobs. `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are installed first, at the versions this project's machines hold on disk;
# the package itself only declares ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test reproduce-cpu frontier study-seg study-fusion study-budget study-monitor bench docs clean

$(BIN)/riskcl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/riskcl

# The demo: CE vs RCL on generated data, then ship the RCL model: calibrate it on its calibration split,
# export it (ONNX, with a parity check against riskcl's own predictions) and write its model card.
demo: venv
	$(BIN)/riskcl demo --out runs/demo
	$(BIN)/riskcl calibrate runs/demo/rcl-proposed --alpha 0.1 --delta 0.1
	$(BIN)/riskcl export runs/demo/rcl-proposed --format onnx --out runs/demo/rcl-proposed/export
	$(BIN)/riskcl card runs/demo/rcl-proposed

# Lint, then every test (the doctests of src/riskcl included, see pyproject.toml).
# Two test processes share the cores (a file's tests stay in one process, so module fixtures are built once);
# each trains with one thread, since two trainings that each take every core slow each other several times over.
TEST_WORKERS ?= 2
test: venv
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The measured CPU-scale reproduction on Brain Tumor MRI (results/brain_mri_cpu/).
reproduce-cpu: venv
	$(BIN)/riskcl sweep configs/sweeps/table5_brain_mri_cpu.yaml --out runs/table5_brain_mri_cpu
	$(BIN)/riskcl report runs/table5_brain_mri_cpu --out results/brain_mri_cpu

# The safety frontier (results/frontier/): every objective x 3 seeds on Brain MRI, the ISIC sample and the demo
# data, then one report whose fair table chooses each run's threshold on its calibration split.
frontier: venv
	$(BIN)/riskcl sweep configs/sweeps/frontier_brain_mri.yaml --out runs/frontier/brain_mri --quiet
	$(BIN)/riskcl sweep configs/sweeps/frontier_isic2018.yaml --out runs/frontier/isic2018 --quiet
	$(BIN)/riskcl sweep configs/sweeps/frontier_demo.yaml --out runs/frontier/demo --quiet
	$(BIN)/riskcl report runs/frontier --out results/frontier --baseline ce --method rcl-proposed --targets 0.95 0.98 0.99

# Risk-calibrated lesion segmentation (results/segmentation/): six pixel losses x 3 seeds on the ISIC 2018 /
# HAM10000 sample, each run's pixel threshold calibrated (CRC, alpha 0.1), then one report.
study-seg: venv
	$(BIN)/riskcl sweep configs/sweeps/frontier_seg_isic2018.yaml --out runs/segmentation --quiet
	for run in runs/segmentation/*/; do $(BIN)/riskcl calibrate $$run --alpha 0.1 --method crc || exit 1; done
	$(BIN)/riskcl report runs/segmentation --out results/segmentation

# Image + metadata fusion against CE + threshold (results/fusion/): the fusion sweep, the 3-seed ensembles of
# image-only CE and of the best fusion recipe (chosen on the validation split: scripts/best_recipe.py), then the
# fair frontier report.
study-fusion: venv
	$(BIN)/riskcl sweep configs/sweeps/fusion_isic2018.yaml --out runs/fusion --quiet
	$(BIN)/riskcl ensemble runs/fusion/recipe-ce-tta__seed-* --out runs/fusion/ensemble-ce-tta
	best=$$($(BIN)/python scripts/best_recipe.py runs/fusion late late-dropout film film-dropout) && \
	$(BIN)/riskcl ensemble runs/fusion/recipe-$${best}__seed-* --out runs/fusion/ensemble-$${best}
	$(BIN)/riskcl report runs/fusion --out results/fusion --reference ce+tta --targets 0.95 0.98 0.99

# Claims that replicate (results/budget/): every recipe x 3 training seeds x 2 split seeds on the ISIC sample and on
# Brain Tumor MRI (duplicates dropped from test), one thread per run and two runs at a time; the 3-seed ensembles of
# CE + TTA per split seed; then one report whose intervals cover a new training seed (two-level bootstrap) and whose
# replication table says on how many split seeds each recipe beat CE + TTA.
study-budget: venv
	$(BIN)/riskcl sweep configs/sweeps/budget_isic2018.yaml --out runs/budget/isic2018 --launcher local --jobs 2 --quiet
	$(BIN)/riskcl sweep configs/sweeps/budget_brain_mri.yaml --out runs/budget/brain_mri --launcher local --jobs 2 --quiet
	for ds in isic2018 brain_mri; do for s in 0 1; do \
	  $(BIN)/riskcl ensemble runs/budget/$$ds/recipe-ce-tta__data.split_seed-$${s}__seed-* \
	    --out runs/budget/$$ds/recipe-ensemble-ce-tta__data.split_seed-$$s || exit 1; done; done
	$(BIN)/riskcl sweep configs/sweeps/budget_isic2018_distill.yaml --out runs/budget/isic2018 --launcher local --jobs 2 --quiet
	$(BIN)/riskcl report runs/budget --out results/budget --reference 'ce+tta [ce-tta]' --targets 0.95 0.98 0.99

# The simulated deployment of results/monitoring/ (after `make study-budget`: its first ISIC CE + TTA run,
# calibrated at alpha 0.1, streamed through the monitor 1,000 times per shift; then longer streams).
study-monitor: venv
	rm -rf runs/monitoring/isic-ce && mkdir -p runs/monitoring
	cp -r runs/budget/isic2018/recipe-ce-tta__data.split_seed-0__seed-0 runs/monitoring/isic-ce
	$(BIN)/riskcl calibrate runs/monitoring/isic-ce --alpha 0.1
	$(BIN)/python benchmarks/bench_monitor.py --run runs/monitoring/isic-ce --streams 1000 --out results/monitoring
	$(BIN)/python benchmarks/bench_monitor.py --run runs/monitoring/isic-ce --streams 200 --length 2400 \
	  --shifts none "hard cases" --out results/monitoring/long

bench: venv
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_cli.py

# docs/CONFIG.md from the config dataclasses (a test fails when it is stale), then the site (build/site/).
docs: venv
	$(BIN)/python -m riskcl.config > docs/CONFIG.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict    # the site in build/site/ (open index.html)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
