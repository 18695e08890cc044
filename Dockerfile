# LeadOps production image: gunicorn serves the app; the same image runs the Celery
# worker, beat and the one-shot migration (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH="/app/.venv/bin:$PATH"

RUN pip install --no-cache-dir uv

WORKDIR /app

# Dependencies first, exactly as locked: this layer is rebuilt only when uv.lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

COPY . .

# Translations are compiled from the committed .po files; static files are collected
# with DEBUG off (hashed, compressed). The SECRET_KEY here exists only for this step.
RUN python -m leadops.i18n_compile \
    && DEBUG=false SECRET_KEY=build-time-only-not-a-secret ALLOWED_HOSTS=localhost \
       python manage.py collectstatic --noinput

# Run as a user without privileges; var/beat holds Celery beat's schedule (a volume).
RUN useradd --system --user-group --uid 10001 --home-dir /app leadops \
    && mkdir -p /app/var/beat \
    && chown -R leadops:leadops /app/var
USER leadops

EXPOSE 8000
CMD ["gunicorn", "leadops.wsgi", "--config", "gunicorn.conf.py"]
