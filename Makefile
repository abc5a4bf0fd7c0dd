# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.histomag-installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/histomag demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# The magnification model shipped in src/histomag/magnification/weights (needs ../shared/data; ~1 h on 2 idle CPU cores):
# leave-groups-out CV (its held-out errors calibrate the interval), a final model on every source, export.
D := ../shared/data
MAG_SOURCES := $(D)/monuseg/index.csv $(D)/cpm15/index.csv $(D)/bach/index.csv \
	$(D)/slides/cmu-1-small-region.svs $(D)/slides/os-1-detail.ome.tif
MAG_FOLDS := --hold-out bach --hold-out cpm15-20x,cpm15-40x --hold-out monuseg --hold-out cmu-1-small-region,os-1-detail

# The shipped file was made with the defaults below: four synthetic slides (`histomag synth`) as one
# more training group, and 8 epochs per fold and for the final model (docs/magnification-real.md,
# fifth session). `make default-model SYNTH=0 EPOCHS=4` is the first recipe (real sources only, 4 epochs).
SYNTH ?= 1
MAG_SYNTH := $(if $(filter 1,$(SYNTH)),build/synth/index.csv)
EPOCHS ?= 8
MAG_EPOCHS := $(if $(EPOCHS),--epochs $(EPOCHS))

build/synth/index.csv: $(STAMP)
	$(BIN)/histomag synth --out build/synth --slides 4 --size 4096 --classes normal,tumor,lymphoid -q

# The rulers' calibration shipped in src/histomag/magnification/weights/rulers.json (needs ../shared/data;
# ~10 min on 2 idle cores): leave-each-dataset-out CV of the rulers, the cue set it chooses, its figures.
RULER_SOURCES := $(MAG_SOURCES) $(D)/breakhis/index.csv

.PHONY: ruler-calibration
ruler-calibration: $(STAMP)
	$(BIN)/histomag magnification calibrate $(RULER_SOURCES) --out src/histomag/magnification/weights/rulers.json -q

.PHONY: default-model
default-model: $(STAMP) $(MAG_SYNTH)
	$(BIN)/histomag magnification cv $(MAG_SOURCES) $(MAG_SYNTH) $(MAG_FOLDS) $(MAG_EPOCHS) --out build/magcv -q
	$(BIN)/histomag magnification train $(MAG_SOURCES) $(MAG_SYNTH) $(MAG_EPOCHS) --out build/magfinal -q
	$(BIN)/histomag magnification export build/magfinal --cv build/magcv --out src/histomag/magnification/weights/magnifier-small.pt
