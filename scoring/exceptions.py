"""Domain errors of scoring; the API maps them to HTTP answers (409 / 400)."""

from __future__ import annotations


class ScoringError(Exception):
    """Base class: the message is a sentence for the user, saying what to do."""


class ActivationInProgress(ScoringError):
    """Another activation is still rescoring the leads (API: 409)."""


class ActivationRefused(ScoringError):
    """This model cannot be activated as it is (no rules, already active…) (API: 400)."""


class ModelReadOnly(ScoringError):
    """Only drafts are edited: clone an active or archived model (API: 409)."""


class InvalidModelData(ScoringError):
    """A model sent as data has errors: `errors` maps fields (and rule lists) to messages."""

    def __init__(self, errors: dict) -> None:
        super().__init__("Invalid scoring model.")
        self.errors = errors
