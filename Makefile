# The two commands of the README, and their parts. The build uses CUDA when the CUDA toolkit is
# here and the CPU otherwise (scripts/build-features.sh says which, and why); CPU=1 forces the CPU.
DOCS ?= assets/demo
CARGO ?= cargo
export CPU
FEATURES := $(shell bash scripts/build-features.sh)

.PHONY: run test deps build model pydeps

## Open rapid-chat on DOCS (default: the demo corpus), fetching the default model if missing.
run: deps
	$(CARGO) run --release $(FEATURES) -- $(DOCS)

## Run the whole test suite (real model, real documents).
test: deps model pydeps
	$(CARGO) test --release $(FEATURES)

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release $(FEATURES)

## The Python packages the tests drive the server with (the official openai client, pinned).
pydeps:
	@python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt

model: build
	$(CARGO) run --release $(FEATURES) --quiet -- fetch-model
