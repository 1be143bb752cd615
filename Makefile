# The two commands of the README, and their parts.
DOCS ?= assets/demo
CARGO ?= cargo

.PHONY: run test deps build model

## Open rapid-chat on DOCS (default: the demo corpus), fetching the default model if missing.
run: deps
	$(CARGO) run --release -- $(DOCS)

## Run the whole test suite (real model, real documents).
test: deps model
	$(CARGO) test --release

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release

model: build
	$(CARGO) run --release --quiet -- fetch-model
