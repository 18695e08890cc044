"""Coalesced rescoring: the dirty set in Redis, one task for many events, the drain."""

import pytest
import redis
from django.utils import timezone

from scoring.services import queue
from scoring.services.queue import DIRTY_KEY, FLAG_KEY, dirty_lead_ids, schedule_rescore
from scoring.tasks import rescore_dirty_leads
from tests.scoring.conftest import CELERY_QUEUE
from tests.scoring.helpers import blank_lead, event, stored

pytestmark = pytest.mark.django_db


def test_schedule_waits_for_commit_then_marks_leads_dirty_and_enqueues_once(
    clean_queue, django_capture_on_commit_callbacks
):
    leads = [blank_lead() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        for _event in range(50):  # 50 events for one lead …
            schedule_rescore([leads[0].pk])
        schedule_rescore([lead.pk for lead in leads])  # … and a batch naming all three
        assert dirty_lead_ids() == set()  # nothing before the commit
    assert len(callbacks) == 51
    assert dirty_lead_ids() == {lead.pk for lead in leads}
    assert clean_queue.exists(FLAG_KEY)
    assert clean_queue.llen(CELERY_QUEUE) == 1  # one task, not one per event


def test_drain_task_rescores_the_dirty_leads_and_clears_the_flag(clean_queue):
    lead = blank_lead()
    event(lead, "webinar_attended", timezone.now())
    clean_queue.sadd(DIRTY_KEY, lead.pk)
    clean_queue.set(FLAG_KEY, 1)

    assert rescore_dirty_leads() == 1  # the task, called directly

    assert stored(lead)[1] == 25
    assert dirty_lead_ids() == set()
    assert not clean_queue.exists(FLAG_KEY)
    assert clean_queue.llen(CELERY_QUEUE) == 0


def test_drain_takes_a_batch_and_re_enqueues_itself_while_leads_remain(clean_queue):
    leads = [blank_lead() for _ in range(5)]
    clean_queue.sadd(DIRTY_KEY, *[lead.pk for lead in leads])
    clean_queue.set(FLAG_KEY, 1)

    assert queue.drain_dirty_leads(batch_size=3) == 3

    assert len(dirty_lead_ids()) == 2
    assert clean_queue.exists(FLAG_KEY)
    assert clean_queue.llen(CELERY_QUEUE) == 1
    assert queue.drain_dirty_leads(batch_size=3) == 2
    assert not clean_queue.exists(FLAG_KEY)


def test_ids_added_after_the_last_pop_are_not_stranded(clean_queue, monkeypatch):
    lead = blank_lead()
    real_delete = clean_queue.delete

    def delete_after_a_concurrent_schedule(*keys):
        # Another process marks a lead dirty between our last SPOP and clearing the flag:
        # it saw the flag set, so it enqueued nothing.
        clean_queue.sadd(DIRTY_KEY, lead.pk)
        return real_delete(*keys)

    monkeypatch.setattr(clean_queue, "delete", delete_after_a_concurrent_schedule)
    queue.drain_dirty_leads()
    assert clean_queue.llen(CELERY_QUEUE) == 1
    assert clean_queue.exists(FLAG_KEY)


def test_a_failed_rescore_puts_the_leads_back(clean_queue, monkeypatch):
    lead = blank_lead()
    clean_queue.sadd(DIRTY_KEY, lead.pk)

    def fail(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(queue, "rescore_leads", fail)
    with pytest.raises(RuntimeError):
        queue.drain_dirty_leads()
    assert dirty_lead_ids() == {lead.pk}


def test_without_redis_the_leads_are_rescored_inline(
    clean_queue, monkeypatch, django_capture_on_commit_callbacks
):
    lead = blank_lead()
    event(lead, "email_open", timezone.now())

    class Down:
        def pipeline(self):
            raise redis.ConnectionError("no redis")

    monkeypatch.setattr(queue, "redis_client", lambda: Down())
    with django_capture_on_commit_callbacks(execute=True):
        schedule_rescore([lead.pk])
    assert stored(lead)[1] == 5
