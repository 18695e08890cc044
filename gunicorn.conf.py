"""gunicorn settings for the container (`web` in docker-compose.yml).

`make run` passes its own --bind and --workers, which take precedence over these.
"""

import os
from pathlib import Path

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
# One control socket per user home would clash between servers, and is not needed.
control_socket_disable = True
# Worker heartbeats on a RAM disk: an overlay filesystem can stall them under load.
RAM_DISK = Path("/dev/shm")  # noqa: S108 (gunicorn's advice for containers)
if RAM_DISK.is_dir():
    worker_tmp_dir = str(RAM_DISK)
