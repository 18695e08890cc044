"""CSV import and export in the lead admin.

`LeadCsvAdminMixin` goes before `admin.ModelAdmin` in LeadAdmin's bases. It adds the
upload view (`<admin>/leadops/lead/import-csv/`, named `leadops_lead_import_csv`), an
"Import CSV" button on the change list, and the `export_csv` action. The work itself is
in `leadops.csv_import` and `leadops.csv_export`.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from leadops.csv_export import leads_csv_response
from leadops.csv_import import CsvImportError, import_leads_csv, too_large_message

# Rows of errors shown on the report page; the counts always cover the whole file.
REPORT_MAX_ROWS = 500


class LeadCsvImportForm(forms.Form):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "UTF-8 or Shift_JIS (Excel's CSV), first row = column names. The email column "
            "is required; 氏名, 会社名, 役職, 部署, 業種, 従業員数, 電話番号, 流入元 and their "
            "English names are read too."
        ),
    )
    source = forms.CharField(
        label=_("Default source"),
        max_length=100,
        required=False,
        help_text=_("For rows without a source, e.g. 展示会 2026-11. Empty: CSV import."),
    )
    dry_run = forms.BooleanField(
        label=_("Check only (dry run: nothing is saved)"),
        required=False,
    )

    def clean_file(self) -> UploadedFile:
        upload = self.cleaned_data["file"]
        # Refused here, before anything reads it: Django has spooled it to a temp file.
        if upload.size > settings.CSV_IMPORT_MAX_BYTES:
            raise ValidationError(too_large_message(upload.size))
        return upload


class LeadCsvAdminMixin:
    import_form_template = "admin/leadops/lead/import_form.html"
    import_report_template = "admin/leadops/lead/import_report.html"

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view(self.import_csv_view)
        return [
            path("import-csv/", view, name="{}_{}_import_csv".format(*info)),
            *super().get_urls(),
        ]

    def has_import_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("leadops.add_lead")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra_context = {"can_import_csv": self.has_import_permission(request)} | (
            extra_context or {}
        )
        return super().changelist_view(request, extra_context)

    def import_csv_view(self, request: HttpRequest) -> HttpResponse:
        """Upload form; on a valid upload, the import's report page."""
        if not self.has_import_permission(request):
            raise PermissionDenied
        request.current_app = self.admin_site.name
        if request.method != "POST":
            return self._render_import(request, self.import_form_template, form=LeadCsvImportForm())
        form = LeadCsvImportForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                report = import_leads_csv(
                    form.cleaned_data["file"],
                    default_source=form.cleaned_data["source"],
                    dry_run=form.cleaned_data["dry_run"],
                )
            except CsvImportError as exc:
                form.add_error("file", str(exc))
            else:
                return self._render_import(request, self.import_report_template, report=report)
        return self._render_import(request, self.import_form_template, form=form)

    def _render_import(self, request: HttpRequest, template: str, **context) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Import leads from CSV"),
            "max_size": settings.CSV_IMPORT_MAX_BYTES,
            "max_rows": REPORT_MAX_ROWS,
            "max_rows_slice": f":{REPORT_MAX_ROWS}",
            **context,
        }
        return TemplateResponse(request, template, context)

    @admin.action(description=_("Export selected leads as CSV"), permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        return leads_csv_response(queryset)
