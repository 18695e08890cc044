from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _ensure_default_model(**kwargs) -> None:
    # A framework hook: a flush (TransactionTestCase) empties the tables the data
    # migration filled; the default model comes back like the role groups do.
    from scoring.defaults import install_default_model

    install_default_model(apps.get_model)


class ScoringConfig(AppConfig):
    name = "scoring"
    verbose_name = _("Scoring")

    def ready(self) -> None:
        post_migrate.connect(_ensure_default_model, sender=self, dispatch_uid="scoring.default")
