from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


class LeadopsConfig(AppConfig):
    name = "leadops"
    verbose_name = _("Leads")

    def ready(self) -> None:
        from leadops.roles import sync_role_groups

        # A framework hook, not business logic: groups follow ROLE_PERMISSIONS after
        # every migrate, when all apps' permissions exist.
        post_migrate.connect(sync_role_groups, dispatch_uid="leadops.sync_role_groups")
