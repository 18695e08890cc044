"""The Celery application: Redis broker, tasks discovered in every app's tasks.py."""

import os

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")

app = Celery("leadops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _survive_broker_loss() -> None:
    """Keep the worker alive when Redis goes away while it holds unacknowledged tasks.

    Celery 5.7 / kombu 5.7: on a lost broker connection the consumer first collects the
    connection (its transport's client becomes None), then closes it; closing the
    channel tries to put the unacked messages back, which builds a new Redis pool from
    that None and raises AttributeError. Kombu ignores only connection errors there, so
    the worker stopped with "Unrecoverable error" on every Redis restart (found by
    tests/faults/test_redis_outage.py). Raising the connection error that the restore
    would have met anyway (Redis is unreachable) lets kombu ignore it and reconnect; the
    messages stay in Redis's unacked set and come back after the visibility timeout.
    """
    connparams = kombu_redis.Channel._connparams
    if getattr(connparams, "_leadops_guarded", False):
        return

    def guarded(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.ConnectionError("The broker connection was closed.")
        return connparams(self, asynchronous)

    guarded._leadops_guarded = True
    kombu_redis.Channel._connparams = guarded


_survive_broker_loss()
