"""What the dashboard's funnel needs, on each stage transition (see StageTransition).

The existing rows are filled by one set-based UPDATE (window functions over each lead's
transitions, the same definitions the funnel query used to compute at read time); the
covering index is built after it. A trigger keeps `lead_source` equal to the lead's
source whoever changes it (admin, API, CSV import, raw SQL): it fires only for rows
whose source really changes, so other lead updates (rescoring) cost nothing.
"""

from django.conf import settings
from django.db import migrations, models

BACKFILL = """
UPDATE handoff_stagetransition t
SET lead_source = w.source, previous_step_at = w.previous_step_at,
    previous_entry_at = w.previous_entry_at
FROM (
    SELECT t.id, l.source,
           CASE t.to_stage
               WHEN 'mql' THEN l.created_at
               WHEN 'sql' THEN max(t.created_at) FILTER (WHERE t.to_stage = 'mql') OVER lead
               WHEN 'sal' THEN max(t.created_at) FILTER (WHERE t.to_stage = 'sql') OVER lead
               WHEN 'opportunity'
                   THEN max(t.created_at) FILTER (WHERE t.to_stage = 'sal') OVER lead
               WHEN 'won'
                   THEN max(t.created_at) FILTER (WHERE t.to_stage = 'opportunity') OVER lead
           END AS previous_step_at,
           lag(t.created_at) OVER (PARTITION BY t.lead_id, t.to_stage
                                   ORDER BY t.created_at, t.id) AS previous_entry_at
    FROM handoff_stagetransition t
    JOIN leadops_lead l ON l.id = t.lead_id
    -- RANGE frame: rows up to this one's time, ties included (an entry at the same
    -- moment counts as before it, as the funnel always counted it).
    WINDOW lead AS (PARTITION BY t.lead_id ORDER BY t.created_at)
) w
WHERE w.id = t.id
"""

SOURCE_TRIGGER = """
CREATE FUNCTION handoff_transition_lead_source() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE handoff_stagetransition SET lead_source = NEW.source WHERE lead_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER handoff_transition_lead_source
AFTER UPDATE OF source ON leadops_lead
FOR EACH ROW WHEN (OLD.source IS DISTINCT FROM NEW.source)
EXECUTE FUNCTION handoff_transition_lead_source();
"""

DROP_SOURCE_TRIGGER = """
DROP TRIGGER IF EXISTS handoff_transition_lead_source ON leadops_lead;
DROP FUNCTION IF EXISTS handoff_transition_lead_source();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("handoff", "0003_dashboard_indexes"),
        ("leadops", "0004_dashboard_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="stagetransition",
            name="transition_stage_time",
        ),
        migrations.AddField(
            model_name="stagetransition",
            name="lead_source",
            field=models.CharField(blank=True, max_length=100, verbose_name="lead source"),
        ),
        migrations.AddField(
            model_name="stagetransition",
            name="previous_entry_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="previous entry at"),
        ),
        migrations.AddField(
            model_name="stagetransition",
            name="previous_step_at",
            field=models.DateTimeField(
                blank=True, null=True, verbose_name="previous funnel step at"
            ),
        ),
        migrations.RunSQL(BACKFILL, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(SOURCE_TRIGGER, reverse_sql=DROP_SOURCE_TRIGGER),
        migrations.AddIndex(
            model_name="stagetransition",
            index=models.Index(
                fields=["to_stage", "created_at"],
                include=("lead", "lead_source", "previous_step_at", "previous_entry_at"),
                name="transition_funnel",
            ),
        ),
    ]
