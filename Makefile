# Set-up, tests and the demo. Every target is idempotent: a stamp per step records what was built from
# which inputs, so a second run reuses the environments and goes straight to work.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
SIM_VENV := .venv-sim
PIP_FLAGS := --quiet --disable-pip-version-check
# Runs a command with the project's ROS environment (AMENT_PREFIX_PATH, LOCALHOST discovery, a per-run
# ROS_DOMAIN_ID, ROS_LOG_DIR, FASTDDS_DEFAULT_PROFILES_FILE, HF_HUB_OFFLINE=1): see autoprune_ros/rosenv.py.
IN_ROS_ENV := $(VENV)/bin/python -m autoprune_ros.rosenv --
MSG_SOURCES := $(shell find msgs -type f)

.PHONY: help setup setup-main setup-sim test lint demo model clean distclean

help:
	@echo "make demo   set everything up, then run the demo on the bundled defaults"
	@echo "make test   set everything up, then run ruff and the test suite"
	@echo "make setup  only set up: .venv (main), .venv-sim (simulator), interface packages"
	@echo "make model  re-record the expert data and retrain the bundled driving VLA (about 1.5 h on 2 cores with -j2: 30-40 min of recording, 56 min of training)"
	@echo "make lint   ruff only;  make clean: build outputs;  make distclean: also both environments"

setup: setup-main setup-sim
setup-main: $(VENV)/.stamp-package
setup-sim: $(SIM_VENV)/.stamp-package

# ---- main environment: torch, transformers, ROS 2 wheels, rosbags, test tools
$(VENV)/.stamp-deps: requirements.txt requirements-dev.txt requirements-msgs.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing pinned requirements into $(VENV) (about 80 s the first time)"
	$(VENV)/bin/pip install $(PIP_FLAGS) -r requirements.txt -r requirements-dev.txt -r requirements-msgs.txt
	@touch $@

$(VENV)/.stamp-interfaces: $(VENV)/.stamp-deps $(MSG_SOURCES) scripts/build_interfaces.sh
	scripts/build_interfaces.sh $(VENV)
	@touch $@

$(VENV)/.stamp-package: $(VENV)/.stamp-interfaces setup.py setup.cfg package.xml
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@touch $@

# ---- simulator environment: MetaDrive's own pins, rclpy, the same interface packages
$(SIM_VENV)/.stamp-deps: sim/requirements.txt requirements-msgs.txt
	@test -x $(SIM_VENV)/bin/python || $(PYTHON) -m venv $(SIM_VENV)
	@echo "setup: installing the simulator environment into $(SIM_VENV) (about 50 s the first time)"
	$(SIM_VENV)/bin/pip install $(PIP_FLAGS) -r sim/requirements.txt -r requirements-msgs.txt
	@touch $@

$(SIM_VENV)/.stamp-interfaces: $(SIM_VENV)/.stamp-deps $(MSG_SOURCES) scripts/build_interfaces.sh
	scripts/build_interfaces.sh $(SIM_VENV)
	@touch $@

$(SIM_VENV)/.stamp-package: $(SIM_VENV)/.stamp-interfaces setup.py setup.cfg package.xml
	$(SIM_VENV)/bin/pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	@touch $@

# ---- work
lint: setup-main
	$(VENV)/bin/ruff check .

test: setup lint
	AUTOPRUNE_REQUIRE_SIM=1 $(IN_ROS_ENV) $(VENV)/bin/python -m pytest

demo: setup
	$(IN_ROS_ENV) $(VENV)/bin/autoprune-demo

# ---- the bundled driving VLA (models/README.md): expert data recorded in parallel with -j2, then training.
# a, b: clean; c, d: small steering perturbations, labelled with the recorded drive (the frames near them are
# dropped); e, f: larger perturbations, labelled with the way back to the lane (--targets reference).
EXPERT_DATA := data/expert
EXPERT_SETS := a b c d e f
$(EXPERT_DATA)/a/dataset.json: EXPERT_ARGS := --seeds 0-19
$(EXPERT_DATA)/b/dataset.json: EXPERT_ARGS := --seeds 20-39
$(EXPERT_DATA)/c/dataset.json: EXPERT_ARGS := --seeds 40-59 --steer-noise 0.06
$(EXPERT_DATA)/d/dataset.json: EXPERT_ARGS := --seeds 60-79 --steer-noise 0.06
$(EXPERT_DATA)/e/dataset.json: EXPERT_ARGS := --seeds 80-99 --steer-noise 0.12 --targets reference
$(EXPERT_DATA)/f/dataset.json: EXPERT_ARGS := --seeds 100-119 --steer-noise 0.12 --targets reference
$(foreach s,$(EXPERT_SETS),$(EXPERT_DATA)/$(s)/dataset.json): | setup
	AMENT_PREFIX_PATH=$(CURDIR)/$(SIM_VENV) $(SIM_VENV)/bin/python -m autoprune_sim.record_expert --resume \
		$(EXPERT_ARGS) --maps 3,4,SCX --ticks 400 --output-dir $(@D) --no-progress

# Then two training runs: the driving model (v6's recipe), and a fine-tune of it that adds the route as an input
# (three route points, withheld from 20% of the samples), predicts its waypoints in the route's frame (along and
# left of the route, vla/route_frame.py), and is pruning-aware: a share of the samples run the node's own
# AutoPrune prefill, so that it keeps driving at 11-22% of its visual tokens.
BASE_MODEL := data/models/tiny_drive_base
$(BASE_MODEL)/training.json: $(foreach s,$(EXPERT_SETS),$(EXPERT_DATA)/$(s)/dataset.json)
	HF_HUB_OFFLINE=1 $(VENV)/bin/autoprune-train --data $(EXPERT_DATA) --output $(@D) --force \
		--epochs 5 --frame-stride 2 --seed 0 --threads 2 --no-progress

model: $(BASE_MODEL)/training.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/autoprune-train --init $(BASE_MODEL) --data $(EXPERT_DATA) --output models/tiny_drive \
		--force --epochs 1 --frame-stride 2 --lr 1e-4 --seed 0 --threads 2 --aux-vision-weight 0 \
		--pruned-share 0.6 --pruned-configs autoprune:22 autoprune:43 --route-lookahead 30 --route-points 3 \
		--route-dropout 0.2 --route-lr-scale 20 --waypoint-frame route --no-progress

clean:
	rm -rf build .pytest_cache .ruff_cache *.egg-info results/demo

distclean: clean
	rm -rf $(VENV) $(SIM_VENV)
