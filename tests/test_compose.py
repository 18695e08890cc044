"""Deployment files: docker-compose.yml, Dockerfile, .dockerignore and .env.example.

No Docker engine here: the files are parsed and checked for what `docker compose up`
relies on, and the commands they run are checked against the code.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from leadops.management.commands.load_demo import SIZES

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "beat")
# Without these the app does not start with DEBUG off, or reaches no database/broker.
PRODUCTION_ENV = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS", "DEBUG")
# "NAME=value", or "# NAME=value" for an optional one.
VARIABLE_LINE = re.compile(r"(?:# )?([A-Z][A-Z0-9_]+)=.*")
ENV_READING_FILES = (
    "leadops/settings.py",
    "leadops/engines.py",
    "leadops/devserver.py",
    "gunicorn.conf.py",
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def _healthcheck(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_every_service_is_there(services):
    assert set(services) == {"postgres", "redis", *APP_SERVICES}


def test_postgres_has_a_volume_and_a_readiness_check(compose, services):
    postgres = services["postgres"]

    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in _healthcheck(postgres)
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert postgres["volumes"][0].split(":")[0] in compose["volumes"]


def test_redis_persists_with_append_only_file(compose, services):
    redis = services["redis"]

    assert redis["image"] == "redis:7"
    assert "redis-cli ping" in _healthcheck(redis)
    assert "--appendonly yes" in _command(redis)
    assert redis["volumes"][0] == "redis-data:/data" and "redis-data" in compose["volumes"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_build_the_image_and_wait_for_healthy_servers(services, name):
    service = services[name]

    assert service["build"] == "."
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert {"path": ".env", "required": False} in service["env_file"]


@pytest.mark.parametrize("name", ["web", "worker", "beat"])
def test_app_starts_only_after_the_migration_succeeded(services, name):
    condition = services[name]["depends_on"]["migrate"]["condition"]

    assert condition == "service_completed_successfully"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_get_every_setting_production_needs(services, name):
    environment = services[name]["environment"]

    assert set(PRODUCTION_ENV) <= set(environment)
    assert environment["DEBUG"] == "false"
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://redis:6379/")
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    # The container's own health check calls 127.0.0.1.
    assert "127.0.0.1" in environment["ALLOWED_HOSTS"].split(",")


def test_database_url_matches_the_postgres_service(services):
    url = services["web"]["environment"]["DATABASE_URL"]
    postgres = services["postgres"]["environment"]

    assert url.startswith(f"postgres://{postgres['POSTGRES_USER']}:")
    assert url.endswith(f"/{postgres['POSTGRES_DB']}")


def test_commands_run_the_real_entry_points(services):
    assert _command(services["migrate"]) == "python manage.py migrate --noinput"
    assert _command(services["web"]).startswith("gunicorn leadops.wsgi")
    assert _command(services["worker"]).startswith("celery -A leadops worker")
    assert _command(services["beat"]).startswith("celery -A leadops beat")
    assert services["migrate"]["restart"] == "no"
    importlib.import_module("leadops.wsgi")
    assert importlib.import_module("leadops").celery_app.main == "leadops"


def test_web_is_published_and_health_checked(services):
    web = services["web"]

    assert "8000:8000" in web["ports"]
    assert "http://127.0.0.1:8000/healthz/" in _healthcheck(web)


def test_worker_is_health_checked_and_beat_keeps_its_schedule(compose, services):
    assert "inspect ping" in _healthcheck(services["worker"])
    schedule = _command(services["beat"]).split(" -s ")[1]
    mount = services["beat"]["volumes"][0]
    assert schedule.startswith(mount.split(":")[1] + "/")
    assert mount.split(":")[0] in compose["volumes"]


def test_healthz_answers_without_login(client, db):
    assert client.get("/healthz/").json() == {"status": "ok"}


def test_dockerfile_installs_exactly_the_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "pip install --no-cache-dir uv" in dockerfile
    assert re.search(r"^COPY pyproject\.toml uv\.lock \./", dockerfile, re.M)
    assert "uv sync --frozen --no-dev" in dockerfile
    assert "python -m leadops.i18n_compile" in dockerfile
    assert re.search(r"DEBUG=false SECRET_KEY=\S+ .*collectstatic --noinput", dockerfile, re.S)
    assert re.search(r"^USER leadops$", dockerfile, re.M)
    assert dockerfile.index("COPY pyproject.toml uv.lock") < dockerfile.index("COPY . .")


def test_dockerignore_keeps_local_state_and_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text().split()

    assert {".git", ".venv", "var", ".env"} <= set(ignored)


def _variables_read(path: Path) -> set[str]:
    """Names passed as a literal to os.environ.get/[], os.getenv or env_bool/int/list."""
    readers = {"get", "getenv", "env_bool", "env_int", "env_list"}
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            name, first = "get", node.slice
        else:
            continue
        if name in readers and isinstance(first, ast.Constant) and str(first.value).isupper():
            names.add(first.value)
    return names


def test_env_example_documents_every_variable_the_code_reads():
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for index, line in enumerate(lines):
        if match := VARIABLE_LINE.fullmatch(line):
            documented[match.group(1)] = lines[index - 1]
    read = set().union(*(_variables_read(ROOT / path) for path in ENV_READING_FILES))
    read |= {env_name for _, env_name, _ in SIZES}

    assert {"DATABASE_URL", "SECRET_KEY", "EMAIL_BACKEND", "EMBEDDED_PG_PORT"} <= read
    assert read - set(documented) == set()
    undocumented = [
        name
        for name, above in documented.items()
        if not above.startswith("# ") or VARIABLE_LINE.fullmatch(above)
    ]
    assert undocumented == []


def test_env_example_sets_what_compose_requires():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )

    assert {"SECRET_KEY", "POSTGRES_PASSWORD", "ALLOWED_HOSTS"} <= set(values)
    assert values["DEBUG"] == "false"
