"""API v1 of scoring (included at /api/v1/scoring/): models as JSON, drafts, preview,
activation (202 with a job to poll). Marketers and managers only.

Views stay thin: a serializer checks the JSON's shape, one service validates and writes
(the same validation as the admin), a serializer answers.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from leadops.api_errors import Conflict
from leadops.roles import Role, has_role
from scoring import services
from scoring.exceptions import ActivationInProgress, ActivationRefused, InvalidModelData
from scoring.models import (
    ActivationJob,
    AttributeRule,
    BehaviorRule,
    ScoringModel,
    TriggerRule,
)
from scoring.services.lifecycle import MODEL_COPY_FIELDS, RULE_COPY_FIELDS, RULE_KINDS

# The model's own settings: the same ones a clone copies.
MODEL_FIELDS = MODEL_COPY_FIELDS


class IsMarketerOrManager(BasePermission):
    message = gettext_lazy(
        "Scoring models are for marketers and managers. Ask a manager for such an account."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        return has_role(request.user, Role.MARKETER, Role.MANAGER)


# --- serializers ----------------------------------------------------------------------------


# Choices are plain text here: the service validates them, with the admin's messages.
class AttributeRuleSerializer(serializers.ModelSerializer):
    field = serializers.CharField(max_length=30)
    operator = serializers.CharField(max_length=20)
    value = serializers.JSONField()

    class Meta:
        model = AttributeRule
        fields = ("id", *RULE_COPY_FIELDS[AttributeRule])
        read_only_fields = ("id",)


class BehaviorRuleSerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(max_length=30)
    conditions = serializers.JSONField(required=False, default=list)

    class Meta:
        model = BehaviorRule
        fields = ("id", *RULE_COPY_FIELDS[BehaviorRule])
        read_only_fields = ("id",)


class TriggerRuleSerializer(serializers.ModelSerializer):
    event_type = serializers.CharField(max_length=30)
    conditions = serializers.JSONField(required=False, default=list)

    class Meta:
        model = TriggerRule
        fields = ("id", *RULE_COPY_FIELDS[TriggerRule])
        read_only_fields = ("id",)


class ScoringModelSerializer(serializers.ModelSerializer):
    attribute_rules = AttributeRuleSerializer(many=True)
    behavior_rules = BehaviorRuleSerializer(many=True)
    trigger_rules = TriggerRuleSerializer(many=True, required=False, default=list)

    class Meta:
        model = ScoringModel
        fields = (
            "id",
            "version",
            "status",
            *MODEL_FIELDS,
            "based_on",
            "created_at",
            "activated_at",
            "attribute_rules",
            "behavior_rules",
            "trigger_rules",
        )
        read_only_fields = ("id", "version", "status", "based_on", "created_at", "activated_at")


class ActivationJobSerializer(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="model.version", read_only=True)
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress_percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = ActivationJob
        fields = (
            "id",
            "model",
            "model_version",
            "status",
            "total",
            "done",
            "progress_percent",
            "summary",
            "error",
            "actor",
            "created_at",
            "started_at",
            "finished_at",
        )


def _job_answer(request: Request, job: ActivationJob, *, code: int) -> Response:
    data = ActivationJobSerializer(job).data
    data["poll"] = request.build_absolute_uri(reverse("scoring-activation-detail", args=[job.pk]))
    return Response(data, status=code)


# --- views ----------------------------------------------------------------------------------


class ScoringModelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Scoring models with all their rules and thresholds; newest version first."""

    serializer_class = ScoringModelSerializer
    permission_classes = (IsAuthenticated, IsMarketerOrManager)
    pagination_class = None

    def get_queryset(self) -> QuerySet[ScoringModel]:
        return ScoringModel.objects.prefetch_related(
            Prefetch("attribute_rules", AttributeRule.objects.order_by("position", "id")),
            Prefetch("behavior_rules", BehaviorRule.objects.order_by("position", "id")),
            Prefetch("trigger_rules", TriggerRule.objects.order_by("position", "id")),
        )

    @extend_schema(
        summary="Create a draft model from JSON",
        responses={201: ScoringModelSerializer, 400: OpenApiResponse(description="Invalid.")},
    )
    def create(self, request: Request) -> Response:
        serializer = ScoringModelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        rules = {kind: [dict(r) for r in data.pop(kind, [])] for kind in RULE_KINDS}
        try:
            model = services.create_draft_model(fields=data, rules=rules, actor=request.user)
        except InvalidModelData as exc:
            raise ValidationError(exc.errors) from None
        return Response(self.get_serializer(self.get_queryset().get(pk=model.pk)).data, status=201)

    @extend_schema(
        summary="Clone a model into a new draft (the way to change a model)",
        request=None,
        responses={201: ScoringModelSerializer},
    )
    @action(detail=True, methods=["post"])
    def clone(self, request: Request, pk: str | None = None) -> Response:
        draft = services.clone_model(self.get_object(), actor=request.user)
        return Response(self.get_serializer(self.get_queryset().get(pk=draft.pk)).data, status=201)

    @extend_schema(
        summary="What activating this model would do (nothing is written)",
        request=None,
        responses={200: inline_serializer("Preview", {"leads": serializers.IntegerField()})},
    )
    @action(detail=True, methods=["post"])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        return Response(services.preview_model(self.get_object()))

    @extend_schema(
        summary="Activate the model: every lead is rescored in the background",
        request=None,
        responses={
            202: ActivationJobSerializer,
            400: OpenApiResponse(description="Refused: no rules, or already active."),
            409: OpenApiResponse(description="Another activation is still running."),
        },
    )
    @action(detail=True, methods=["post"])
    def activate(self, request: Request, pk: str | None = None) -> Response:
        try:
            job = services.activate_model(self.get_object(), actor=request.user)
        except ActivationInProgress as exc:
            raise Conflict(str(exc)) from None
        except ActivationRefused as exc:
            raise ValidationError({"detail": str(exc)}) from None
        return _job_answer(request, job, code=status.HTTP_202_ACCEPTED)


class ActivationJobViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Activations: who, when, progress of the rescore, what changed."""

    serializer_class = ActivationJobSerializer
    permission_classes = (IsAuthenticated, IsMarketerOrManager)
    queryset = ActivationJob.objects.select_related("model", "actor")


router = SimpleRouter()
router.register("models", ScoringModelViewSet, basename="scoring-model")
router.register("activations", ActivationJobViewSet, basename="scoring-activation")

urlpatterns = [*router.urls]
