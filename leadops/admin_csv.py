"""CSV import and export in the lead admin (filled in by the CSV work).

`LeadCsvAdminMixin` goes before `admin.ModelAdmin` in LeadAdmin's bases. It adds the
upload view's URL in `get_urls` and the `export_csv` action.
"""

from django.contrib import admin


class LeadCsvAdminMixin:
    def get_urls(self):
        return super().get_urls()

    @admin.action(description="Export selected leads as CSV")
    def export_csv(self, request, queryset):
        raise NotImplementedError
