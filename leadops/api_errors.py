"""The API's exception handler (see settings.REST_FRAMEWORK)."""

from rest_framework.views import exception_handler as drf_exception_handler

exception_handler = drf_exception_handler
