"""Install the default scoring model (see scoring/defaults.py), active on a fresh database."""

from django.db import migrations


def install(apps, schema_editor):
    from scoring.defaults import install_default_model

    install_default_model(apps.get_model)


class Migration(migrations.Migration):
    dependencies = [("scoring", "0001_initial")]

    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
