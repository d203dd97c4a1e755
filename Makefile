# Each target sets up what it needs: a virtual environment in .venv with the project installed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup tools lint references config-reference docs docs-serve compose-demo demo demo-2d imnn-example datamodels-example test test-demo test-connect test-references test-e2e test-fast bench bench-dii bench-gaf bench-imnn bench-datamodels bench-quality bench-row-step bench-small-runs bench-pipeline-scale bench-decontaminate bench-plan bench-kmeans bench-gpu bench-embed bench-stages clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[all,test,docs]'
	# The GAF reference package, for the tests that compare against it. It imports only torch
	# (installed above) but lists torchvision, whose wheels pin other torch releases: no deps.
	$(VENV)/bin/python -m pip install --quiet --no-deps gradient-agreement-filtering==0.1.3
	# A native BLAS for Spark's MLlib (netlib loads libblas.so.3) where apt-get may install one;
	# without it MLlib runs on its Java BLAS (bench/kmeans.py measures both).
	@ldconfig -p 2>/dev/null | grep -q 'libblas\.so\.3 ' || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  libopenblas0-pthread) >/dev/null 2>&1; } || echo "no native BLAS installed: MLlib uses its Java BLAS"
	# Delta's jars into Ivy's cache once, before test workers start sessions side by side.
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -c "from jobs.io.session import build_session; build_session('warm-up', 'local[1]', quiet=True).stop()"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gio-spark run --config conf/demo.yaml

demo-2d: $(STAMP)
	$(VENV)/bin/gio-spark demo --out out/demo

# The IMNN tutorial on Spark: writes its simulations to Delta, then fits them (conf/imnn.yaml).
imnn-example: $(STAMP)
	$(VENV)/bin/gio-spark imnn-example --config conf/imnn.yaml

# Datamodels on the digits (conf/datamodels.yaml): init, work (models as Spark tasks), regress.
datamodels-example: $(STAMP)
	$(VENV)/bin/gio-spark datamodels example --config conf/datamodels.yaml

# The generated references: the config's (docs/config.md, from the config's declaration), the
# CLI's (docs/cli.md, every command's --help) and the docs' benchmark tables (from bench/results/,
# by bench/report.py); a test fails when any is stale.
references: $(STAMP)
	$(VENV)/bin/python -m jobs.tools.reference > docs/config.md
	$(VENV)/bin/python -m bench.report
	$(VENV)/bin/python -c "import sys; from jobs.cli import reference; sys.stdout.write(reference())" > docs/cli.md

config-reference: references

# The documentation site (MkDocs, mkdocs.yml) into site/, strict: a broken link or anchor, a
# page missing from the nav or an API reference that does not resolve fails it. make test
# builds it too (tests/test_docs.py). `make docs-serve` serves it on 127.0.0.1:8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

# Debian's docker-compose checks docker/ statically (no engine needed); skipped where it can't install.
tools:
	@command -v docker-compose >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) \
	  >/dev/null 2>&1; } || echo "docker-compose not installed: its check will be skipped"

lint: $(STAMP)
	$(VENV)/bin/ruff check jobs gio_core tests bench
	$(VENV)/bin/mypy gio_core --ignore-missing-imports

# Two pytest workers (pytest-xdist), each with its own Spark session, a test file each at a time:
# the Spark tests spend much of their time waiting on JVMs and child processes.
test: $(STAMP) tools lint
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 -m "not demo and not reference and not connect and not e2e"

# The README's first command, `make demo`, run for real and its output checked (5 minutes).
test-demo: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m demo

# Spark Connect end to end (tests/jobs/test_connect.py, 4-5 minutes): a local Connect server that
# pyspark starts, driven through the Python API, the estimator and the command line.
test-connect: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m connect

# The end-to-end checks that need most time (18 tests; 10 of them took about 15 minutes on 2
# cores): a run on an S3 API on 127.0.0.1, a standalone cluster with a worker killed, a full
# disk, runs killed inside embed and inside quantize and between the text store's chunks (then
# the pool grown), a Spark task of the row step killed, a Delta pool appended to, three runs at
# once, the pool in another order, text sides with DSIR, spark-submit on local[*], and the
# README's command-line and notebook, the tool pages' and the several-targets samples run as
# written, and the plan's driver memory against a command-line run's (the kill at every stage
# boundary stays in make test).
test-e2e: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=10 -m e2e

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow and not demo and not reference and not connect and not e2e"

bench: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[all,test,bench]'
	$(VENV)/bin/python bench/compat_vs_source.py
	$(VENV)/bin/python bench/scale.py

# DADApy 0.3.4 pins jax 0.4.30 and flax 0.8.5: it gets an environment of its own.
.venv-dadapy/bin/python:
	$(PYTHON) -m venv .venv-dadapy
	.venv-dadapy/bin/python -m pip install --quiet dadapy==0.3.4

bench-dii: $(STAMP) .venv-dadapy/bin/python
	$(VENV)/bin/python bench/dii_vs_dadapy.py --dadapy-python .venv-dadapy/bin/python

# The reference packages run beside ours, the same calls in both (pytest -m reference; a
# reference that pins other libraries gets an environment of its own): the GIO source package
# (the bench extra; 5 min, its own run is slow) and DADApy's DiffImbalance (1 min, after its
# environment is built: 2 min the first time).
test-references: $(STAMP) .venv-dadapy/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[bench,imnn-reference]'
	$(VENV)/bin/python -m pytest -q -m reference

bench-gaf: $(STAMP)
	$(VENV)/bin/python bench/gaf_vs_reference.py --out bench/results/gaf_vs_reference_cpu_2cores.jsonl

bench-imnn: $(STAMP)
	$(VENV)/bin/python bench/imnn_paths.py --out bench/results/imnn_paths_cpu_2cores.jsonl

bench-datamodels: $(STAMP)
	$(VENV)/bin/python bench/datamodels_regression.py --out bench/results/datamodels_regression_cpu_2cores.jsonl
	$(VENV)/bin/python bench/datamodels_workers.py --out bench/results/datamodels_workers_cpu_2cores.jsonl

# K-means engines (lloyd, MLlib with Java and native BLAS) against scikit-learn's, 100,000 x 384
# rows, k = 500.
bench-kmeans: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[bench]'
	$(VENV)/bin/python bench/kmeans.py --out bench/results/kmeans_cpu_2cores.jsonl
	$(VENV)/bin/python bench/kmeans.py --rows 300000 --dim 64 --k 4000 --baseline 8821ffe \
	  --variants sklearn-2,faiss-2,core,stage,core@BASE,stage@BASE \
	  --out bench/results/kmeans_64d_cpu_2cores.jsonl

# Per-stage wall time at 100,000 x 384 precomputed rows against reading and counting the pool.
bench-stages: $(STAMP)
	$(VENV)/bin/python bench/stages.py --out bench/results/stages_cpu_2cores.jsonl

# Embedding backends (torch, onnx, onnx-int8) in the Spark UDF, texts/s and cosine to torch.
bench-embed: $(STAMP)
	$(VENV)/bin/python bench/embed_throughput.py --out bench/results/embed_cpu_2cores.jsonl

# On a machine with a CUDA GPU: JAX's CUDA wheels, then embed and select on the GPU against the
# CPU (1M x 100k centroids for select); figures appended to bench/results/gpu.jsonl.
bench-gpu: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet "jax[cuda12]==$$($(VENV)/bin/python -c 'import jax; print(jax.__version__)')"
	$(VENV)/bin/python bench/gpu.py --out bench/results/gpu.jsonl

# The row step against whole clusters in the pipeline, 100k and 1M precomputed rows (time,
# driver memory, held-out MMD); appended to bench/results/row_step_cpu_2cores.jsonl.
bench-row-step: $(STAMP)
	$(VENV)/bin/python bench/row_step.py

# The whole pipeline's cost against the pool's rows (100,000, 300,000 and 1,000,000 precomputed
# rows; pass ROWS="..." for others): each stage's seconds, the driver's peak memory, the
# selection's MMD² to held-out rows, and the growth exponents.
bench-pipeline-scale: $(STAMP)
	$(VENV)/bin/python bench/pipeline_scale.py $(if $(ROWS),--rows $(ROWS)) --out bench/results/pipeline_scale_cpu_2cores.jsonl

# A small run's time (1,000 precomputed rows) from the command line and in a session that is
# up, cold and with a new select option, against the same runs on an earlier commit (--baseline).
bench-small-runs: $(STAMP)
	$(VENV)/bin/python bench/small_runs.py --out bench/results/small_runs_cpu_2cores.jsonl

# Decontamination: the copy search through the target's clusters against all pairs (100k x 20k,
# planted copies), and the demo selected without and with it; bench/results/decontaminate_cpu_2cores.jsonl.
bench-decontaminate: $(STAMP)
	rm -f bench/results/decontaminate_cpu_2cores.jsonl
	$(VENV)/bin/python bench/decontaminate.py --out bench/results/decontaminate_cpu_2cores.jsonl

# gio-spark plan on the demo, then the run: the embedding time planned against taken (8 minutes).
bench-plan: $(STAMP)
	$(VENV)/bin/python bench/plan.py --out bench/results/plan_cpu_2cores.jsonl

# Selection quality against random, k-center, nearest neighbours and DSIR (bench/quality.py).
bench-quality: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[all,test,quality]'
	$(VENV)/bin/python bench/quality.py --out-dir bench/results/quality

# The containers built and run for real (docker/compose_demo.sh): the image (on a base made from
# Debian's packages where Docker Hub is out of reach), the demo on local[*] in a container and on
# a master + two workers, and their Delta outputs compared. Needs a Docker engine (started here
# as root if none runs). Not part of make test (about 20 minutes).
compose-demo:
	docker/compose_demo.sh

clean:
	rm -rf $(VENV) .venv-dadapy out build *.egg-info
