"""The lead's source on each hand-off, for the dashboard's SLA and sales-answer sections.

With a source filter those sections joined every hand-off of the period to its lead
(a year at 1M leads: ~180 ms for SLA alone); with the source on the hand-off they read
the hand-offs only, as the funnel reads its transitions. Existing rows are filled by one
UPDATE; the trigger of migration 0004, which keeps each transition's `lead_source`
equal to its lead's source, now keeps the hand-offs' too (still only for leads whose
source really changes).
"""

from django.db import migrations, models

BACKFILL = """
UPDATE handoff_handoff h SET lead_source = l.source
FROM leadops_lead l WHERE l.id = h.lead_id AND h.lead_source IS DISTINCT FROM l.source
"""

SOURCE_FUNCTION = """
CREATE OR REPLACE FUNCTION handoff_transition_lead_source() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE handoff_stagetransition SET lead_source = NEW.source WHERE lead_id = NEW.id;
    UPDATE handoff_handoff SET lead_source = NEW.source WHERE lead_id = NEW.id;
    RETURN NULL;
END
$$;
"""

PREVIOUS_SOURCE_FUNCTION = """
CREATE OR REPLACE FUNCTION handoff_transition_lead_source() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE handoff_stagetransition SET lead_source = NEW.source WHERE lead_id = NEW.id;
    RETURN NULL;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("handoff", "0005_open_unassigned_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="handoff",
            name="lead_source",
            field=models.CharField(blank=True, max_length=100, verbose_name="lead source"),
        ),
        migrations.RunSQL(BACKFILL, reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL(SOURCE_FUNCTION, reverse_sql=PREVIOUS_SOURCE_FUNCTION),
    ]
