# dualdepth_ros — one-command environment, tests and demo.
#   make demo   set everything up, build, and run depth_node on the bundled sample drive through ROS 2
#   make test   set everything up, build with colcon, lint, and run the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
DEMO_DIR := runs/demo

# ROS 2 traffic stays on this machine: DDS discovery must not multicast off it.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
export PYTHONUNBUFFERED := 1
# This machine's pip configuration adds local indexes that print one warning per package; hide only those lines.
LINT_PATHS := dualdepth_ros test setup.py $(wildcard launch/*.py)
PIP_FILTER := grep -v "^WARNING: Location 'file:" || true

# Real drives (one sub-folder per drive holding bag/; ../shared/data on this project's machines): the default
# model trains on REAL_TRAIN_DRIVES; `make real-eval` scores every drive with ground truth.
REAL_DATA         ?= $(abspath ../shared/data)
REAL_TRAIN_DRIVES ?= kitti_odometry_03 kitti_raw_0005
REAL_PLOT_DRIVE   ?= kitti_raw_0009
# Synthetic drives (ablations, the ladder, and the held-out drive the default model is also scored on); the
# training seeds are never used by evaluation.
DATA          := runs/data
TRAIN_SEEDS   := 101 102 103 104
HELDOUT_SEED  := 9001
TRAIN_BAGS    := $(foreach s,$(TRAIN_SEEDS),$(DATA)/drive_$(s))
HELDOUT_BAG   := $(DATA)/heldout_$(HELDOUT_SEED)
DRIVE_ARGS    := --frames 300 --width 320 --height 96 --format mcap
MODEL         := models/dualdepth_default.pt
# The model folder (model.onnx + model.json + weights.pt) is derived from $(MODEL), never tracked (.gitignore).
EXPORTED      := models/dualdepth_default

# ROS 2 launch / launch_testing / ros2cli wheels (test tooling; not on PyPI, see their README):
# `make test` installs them when the folder exists; without it the launch test skips and says why.
ROS2_LAUNCH_WHEELS ?= $(abspath ../shared/ros2-launch)
LAUNCH_STAMP := $(VENV)/.ros2-launch-stamp
# The ros-jazzy wheels register their packages under the venv prefix but set no AMENT_PREFIX_PATH.
VENV_AMENT := AMENT_PREFIX_PATH="$(abspath $(VENV))$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH}"

.PHONY: help setup build lint test test-tools test-fast demo sample bench data train real-train-drives export-default ablation ladder real-eval clean

help:
	@echo "make setup   create .venv with pinned deps (ROS 2 Jazzy wheels, torch CPU, rosbags, colcon) and install the package"
	@echo "make test    setup + colcon build + lint + the whole test suite"
	@echo "make demo    setup + build + depth_node on the bundled sample drive via ROS 2 (bag, mosaic, latency, accuracy)"
	@echo "make sample  re-record the bundled sample drive (test/data/sample_drive)"
	@echo "make bench   print the benchmark figures (rendering, training step)"
	@echo "make export-default  derive the default model folder (models/dualdepth_default/) from $(MODEL) again"
	@echo "make train   retrain the default model on the real drives of REAL_DATA (1-2 h on 2 CPU cores) and score it"
	@echo "make real-eval  the shipped model and a constant depth on every real drive with ground truth (REAL_DATA)"
	@echo "make ablation / make ladder  the studies of docs/ablation.md and docs/ladder.md (synthetic drives; hours)"
	@echo "make gpu-cache gpu-wheels  prepare a GPU run (decoded real drives, wheels a bare CUDA image lacks)"
	@echo "make gpu-run  the one-command GPU run (scripts/gpu_run.sh; GPU_RUN_ARGS='--device cpu --smoke' on a CPU)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-pip.txt setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "dualdepth_ros needs Python >= 3.10, found " + sys.version.split()[0])'
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "python3-venv is missing; installing it with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (the first run downloads them; later runs are no-ops)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | $(PIP_FILTER)
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | $(PIP_FILTER)
	@$(PY) -c 'import torch, rclpy, sensor_msgs.msg, rosbags, cv2, onnxruntime' \
	  || { echo "setup failed: a required module does not import (see above)"; exit 1; }
	@touch $(STAMP)
	@echo "setup done: $(VENV)/bin/dualdepth --help"

build: setup $(EXPORTED)/model.onnx
	@$(VENV)/bin/colcon --log-base log build --base-paths . --build-base build --install-base install \
	  --event-handlers console_cohesion- summary+ 2>&1 | grep -v "^WARNING" || true
	@test -x install/dualdepth_ros/lib/dualdepth_ros/dualdepth || { echo "colcon build did not install the executables"; exit 1; }

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test-tools: setup
	@if [ -f "$(ROS2_LAUNCH_WHEELS)/requirements.txt" ]; then \
	  if [ ! -f $(LAUNCH_STAMP) ] || [ "$(ROS2_LAUNCH_WHEELS)/requirements.txt" -nt $(LAUNCH_STAMP) ]; then \
	    echo "installing the ROS 2 launch/launch_testing wheels from $(ROS2_LAUNCH_WHEELS) (test tooling)"; \
	    $(PY) -m pip install -q --disable-pip-version-check --no-deps --find-links "$(ROS2_LAUNCH_WHEELS)/wheels" \
	      -r "$(ROS2_LAUNCH_WHEELS)/requirements.txt" 2>&1 | $(PIP_FILTER); \
	    $(PY) -c 'import launch_ros.actions, launch_testing' || { echo "the launch wheels do not import"; exit 1; }; \
	    touch $(LAUNCH_STAMP); \
	  fi; \
	else \
	  echo "note: no ROS 2 launch wheels at $(ROS2_LAUNCH_WHEELS) (set ROS2_LAUNCH_WHEELS=...): the launch test will skip"; \
	fi

test: setup build lint test-tools
	$(VENV_AMENT) $(VENV)/bin/pytest -q -ra --durations=10

# depth_node from the colcon install space as its own process, the sample drive played to it over
# ROS 2 (localhost only), its outputs recorded: runs/demo/{bag,mosaic.png,summary.json,node.log}.
demo: build
	@test -f $(EXPORTED)/model.onnx || \
	  { echo "$(EXPORTED)/model.onnx is missing: run 'make export-default' (it derives it from $(MODEL))"; exit 1; }
	@export $(VENV_AMENT); set +u; source install/setup.bash; set -u; \
	  $(VENV)/bin/dualdepth demo --bag test/data/sample_drive --out $(DEMO_DIR) --overwrite --camera-height 1.5 \
	    --node-command "$(CURDIR)/install/dualdepth_ros/lib/dualdepth_ros/depth_node"

sample: setup
	$(VENV)/bin/dualdepth make-sample --out test/data/sample_drive --overwrite --frames 100 --width 320 --height 96 --seed 1 --format mcap

bench: setup
	$(VENV)/bin/dualdepth bench render

data: $(TRAIN_BAGS) $(HELDOUT_BAG)

$(DATA)/drive_%: | setup
	$(VENV)/bin/dualdepth make-sample --out $@ --seed $* $(DRIVE_ARGS) --overwrite

$(DATA)/heldout_%: | setup
	$(VENV)/bin/dualdepth make-sample --out $@ --seed $* --frames 200 --width 320 --height 96 --format mcap --overwrite

# Reproduces models/dualdepth_default.pt and its figures (models/MODEL_CARD.md): config/default_model.yaml on the
# real training drives of REAL_DATA, then the real-drive table with the learning curve on every drive with depth
# ground truth, and the synthetic held-out drive beside it. kitti_raw_0009 (a KITTI Eigen test drive) is only scored.
train: real-train-drives setup $(HELDOUT_BAG)
	$(VENV)/bin/dualdepth train $(foreach d,$(REAL_TRAIN_DRIVES),--bag $(REAL_DATA)/$(d)/bag) --out runs/default \
	  --resume-if-exists --config config/train.yaml --config config/default_model.yaml
	$(VENV)/bin/dualdepth pack --checkpoint runs/default/last.pt --out $(MODEL)
	$(VENV)/bin/dualdepth real-eval --model $(MODEL) --data $(REAL_DATA) --curve runs/default \
	  --json models/dualdepth_default.real_eval.json --table models/dualdepth_default.real_eval.md
	$(VENV)/bin/dualdepth eval --checkpoint $(MODEL) --bag $(REAL_DATA)/$(REAL_PLOT_DRIVE)/bag --no-pose \
	  --plots models/dualdepth_default_plots
	$(VENV)/bin/dualdepth eval --checkpoint $(MODEL) --bag $(HELDOUT_BAG) --json models/dualdepth_default.eval.json
	$(MAKE) export-default

real-train-drives:
	@for d in $(REAL_TRAIN_DRIVES); do test -d $(REAL_DATA)/$$d/bag || { echo "make train: no drive $(REAL_DATA)/$$d/bag;" \
	  "set REAL_DATA=folder (one sub-folder per drive, holding bag/) or REAL_TRAIN_DRIVES='names'; a KITTI raw drive" \
	  "converts with dualdepth kitti-to-bag (docs/kitti.md)"; exit 2; }; done

# The default model folder (ONNX + model.json + weights.pt), derived from the one stored model $(MODEL):
# by `make build` when it is missing or older than the checkpoint (before colcon installs it), by
# `make export-default` always; test/test_export_default.py checks that it matches $(MODEL).
$(EXPORTED)/model.onnx: $(MODEL) | $(STAMP)
	$(VENV)/bin/dualdepth export --checkpoint $(MODEL) --out $(EXPORTED) --per-branch --overwrite

export-default: setup
	$(VENV)/bin/dualdepth export --checkpoint $(MODEL) --out $(EXPORTED) --per-branch --overwrite

# The ablation table (docs/ablation.md): every variant with the same budget and three seeds, scored on the
# held-out drive (mean ± std over seeds). ABLATION_ARGS="--only full --only …" runs a subset of the rows.
ABLATION_ARGS ?=
ablation: setup data
	$(VENV)/bin/dualdepth ablate $(foreach b,$(TRAIN_BAGS),--bag $(b)) --heldout $(HELDOUT_BAG) --out runs/ablation \
	  --seeds 0 1 2 $(ABLATION_ARGS) --table docs/ablation.md --json docs/ablation.json

# The shipped model and a constant depth on every real drive with ground truth in REAL_DATA (one table;
# without that folder it says how to convert a KITTI raw drive with `dualdepth kitti-to-bag`).
real-eval: setup
	$(VENV)/bin/dualdepth real-eval --model $(MODEL) --data $(REAL_DATA) --json runs/real_eval.json

# A GPU run in one command (README, "GPU run"). gpu-cache decodes the real drives of REAL_DATA into GPU_CACHE
# (< 20 MiB; runs/ is ignored, so it travels as a carried path, outside the tracked files); gpu-wheels fetches
# the wheels a bare CUDA image lacks (rosbags and its needs, for Python GPU_PYTHON) into .whl/ (ignored, carried);
# gpu-run runs scripts/gpu_run.sh (GPU_RUN_ARGS="--device cpu --smoke" checks it on a CPU).
GPU_CACHE    ?= runs/gpu_cache
GPU_RUN_OUT  ?= runs/gpu_run
GPU_RUN_ARGS ?=
GPU_PYTHON   ?= 3.12
.PHONY: gpu-cache gpu-wheels gpu-run
gpu-cache: setup
	$(VENV)/bin/dualdepth gpu-cache --data $(REAL_DATA) --out $(GPU_CACHE) --overwrite

gpu-wheels:
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version $(GPU_PYTHON) --implementation cp --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  rosbags==0.11.9 apsw==3.54.1.0 backports.zstd==1.8.0 lz4==4.4.5 ruamel.yaml==0.19.1 2>&1 | $(PIP_FILTER)

gpu-run:
	scripts/gpu_run.sh --out $(GPU_RUN_OUT) --cache $(GPU_CACHE) $(GPU_RUN_ARGS)

# The learning ladder (docs/ladder.md): each network replaced by ground truth in turn, held-out curves by step.
ladder: setup data
	$(VENV)/bin/dualdepth ablate --variants ladder $(foreach b,$(TRAIN_BAGS),--bag $(b)) --heldout $(HELDOUT_BAG) \
	  --out runs/ladder --table docs/ladder.md --json docs/ladder.json

clean:
	rm -rf build install log runs .pytest_cache
