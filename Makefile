# The two commands a newcomer needs:  make demo  and  make test
# Both create .venv with Python 3.10 (Lava supports only 3.10) and install the project into it.
# The KJV corpus ships with the package; make test also installs chromium if it is missing
# (scripts/ensure-chromium: apt-get as root or with sudo, else it says the command to run).

PYTHON310 ?= $(shell scripts/find-python310)
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
OUT       ?= out
TOKENS    ?= 64

.PHONY: demo test install clean-out

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON310)" || { echo "no Python 3.10: see the message above"; exit 1; }
	test -x $(BIN)/python || $(PYTHON310) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=70" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,neurobench,distributed,crosscheck]'
	touch $(STAMP)

# The main job on the shipped default model: evaluate, generate, convert to a Loihi 2 bundle,
# inspect it, simulate it in Lava (float and bit-accurate fixed point), then profile measured
# spikes and energy per layer and write the HTML report.
demo: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/spikegpt-deploy evaluate --data kjv --max-tokens 16384
	$(BIN)/spikegpt-deploy generate --prompt "In the beginning" --tokens 160 --temperature 0.7 --seed 1
	$(BIN)/spikegpt-deploy convert --target loihi2 --calibration kjv -o $(OUT)/bundle --force
	$(BIN)/spikegpt-deploy evaluate $(OUT)/bundle --data kjv --max-tokens 16384
	$(BIN)/spikegpt-deploy inspect $(OUT)/bundle
	$(BIN)/spikegpt-deploy simulate $(OUT)/bundle --prompt "In the beginning" --tokens $(TOKENS) --precision float --temperature 0
	$(BIN)/spikegpt-deploy simulate $(OUT)/bundle --prompt "In the beginning" --tokens $(TOKENS) --precision fixed --temperature 0
	$(BIN)/spikegpt-deploy profile --data kjv --tokens 512 --target loihi2 --target loihi --target spinnaker2 --neurobench -o $(OUT)/profile
	$(BIN)/spikegpt-deploy report $(OUT)/profile/profile.json --html $(OUT)/profile/report.html

test: $(STAMP)
	@scripts/ensure-chromium
	$(BIN)/python -m pytest -q

clean-out:
	rm -rf $(OUT)
