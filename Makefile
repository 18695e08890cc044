# LeadOps: `make run` starts the whole app with demo data, `make test` runs the suite.
# Only Python >= 3.11 is needed: uv is installed into var/tools when it is missing.

PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo var/tools/bin/uv)
RUN := $(UV) run --frozen
PROD_CHECK_ENV := DEBUG=false SECRET_KEY=check-deploy-$$(printf '%064d' 0) ALLOWED_HOSTS=leadops.example.com

.PHONY: run test lint check-deploy translations bench install clean-var

run: install translations
	$(RUN) python -m leadops.devserver

test: install translations lint check-deploy
	$(RUN) pytest $(PYTEST_ARGS)

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

check-deploy: install
	$(PROD_CHECK_ENV) $(RUN) python manage.py check --deploy --fail-level WARNING

# Catalogues are compiled from the committed .po files on every build; .mo is not committed.
translations: install
	$(RUN) python -m leadops.i18n_compile

bench: install translations
	$(RUN) python -m bench $(BENCH_ARGS)

install: .venv/.synced

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	touch $@

var/tools/bin/uv:
	$(PYTHON) -m venv var/tools
	var/tools/bin/pip install --quiet uv

clean-var:
	rm -rf var/postgres var/redis
