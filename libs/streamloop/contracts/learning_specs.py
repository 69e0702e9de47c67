"""The learning side of the pipeline spec: labels, the model, and the policies of the loop.

How labels join predictions (``LabelsSpec``), what model is learned and how its predictions become
actions and explanations (``ModelSpec``), and how the loop watches and replaces it: drift detection,
retraining and catch-up, promotion and rollback, staleness.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from streamloop.contracts.spec_base import DurationMs, PeriodMs, PositiveDurationMs, SpecModel


def _class_name(value: Any) -> Any:
    """A class as every record names it: YAML's booleans and any spelling of them are ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML's 1.0: class "1", as a label sent as 1.0 is (ml.promotion.class_key)
    if isinstance(value, str | int) and str(value).lower() in _OTHER_BOOLEAN_CLASS:
        return str(value).lower()
    return str(value) if isinstance(value, int) else value


_OTHER_BOOLEAN_CLASS = {"true": "false", "false": "true"}
ClassName = Annotated[str, BeforeValidator(_class_name), Field(min_length=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class LabelsSpec(SpecModel):
    topic: str = "labels.label.v1"
    join_horizon: PositiveDurationMs = 600_000


class ActionRule(SpecModel):
    when_probability_at_least: float | None = Field(default=None, ge=0.0, le=1.0)
    when_value_at_least: float | None = None
    otherwise: str | None = None
    action: str | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> ActionRule:
        conditions = [self.when_probability_at_least, self.when_value_at_least]
        if self.otherwise is not None:
            if any(c is not None for c in conditions) or self.action is not None:
                raise ValueError("an 'otherwise' rule takes no condition and no action")
        elif sum(c is not None for c in conditions) != 1 or not self.action:
            raise ValueError("give exactly one condition and an action, or 'otherwise'")
        return self


class ExplanationSpec(SpecModel):
    top_k: int = Field(default=3, ge=1, le=50)
    sample_share: Share = 0.1


class RegressionCost(SpecModel):
    per_unit_over: float = Field(default=1.0, ge=0)
    per_unit_under: float = Field(default=1.0, ge=0)


class ModelSpec(SpecModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    task: Literal["classification", "regression"]
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: list[str] = Field(default_factory=list)
    positive_class: ClassName | None = None
    # A binary classifier learns positive-vs-rest (True/False) and answers with these two names.
    negative_class: ClassName | None = None
    actions: list[ActionRule] = Field(default_factory=list)
    explanations: ExplanationSpec = Field(default_factory=ExplanationSpec)
    cost_matrix: dict[str, dict[str, float]] | None = None
    cost_function: RegressionCost | None = None
    default_prediction: float | str | None = Field(
        default=None, description="Answer for an unknown entity over gRPC; unset means NOT_FOUND."
    )

    @model_validator(mode="after")
    def _estimators_are_river(self) -> ModelSpec:
        # A spec names classes to import; allowing any module would make a config file a code path.
        named = [("estimator", self.estimator)]
        named += [(f"preprocessing[{i}]", p) for i, p in enumerate(self.preprocessing)]
        for where, path in named:
            if not re.fullmatch(r"river(\.[A-Za-z_][A-Za-z0-9_]*)+", path):
                example = "river.linear_model.LogisticRegression"
                raise ValueError(f"{where}: {path!r} is not a river class path such as {example}")
        if self.task == "classification" and self.cost_function is not None:
            raise ValueError("cost_function is for regression; use cost_matrix")
        self._check_binary_classes()
        if self.task == "regression" and self.cost_matrix is not None:
            raise ValueError("cost_matrix is for classification; use cost_function")
        return self


    def _check_binary_classes(self) -> None:
        positive, negative = self.positive_class, self.negative_class
        if positive is None:
            if negative is not None:
                raise ValueError("negative_class needs a positive_class")
            return
        if negative is None:
            if positive not in _OTHER_BOOLEAN_CLASS:
                raise ValueError(f"positive_class {positive!r} needs a negative_class: the class predicted when an "
                                 f"event is not {positive!r} (only 'true' and 'false' imply each other)")
            # Frozen model: the implied name is set once, here, while the spec is validated.
            object.__setattr__(self, "negative_class", _OTHER_BOOLEAN_CLASS[positive])
        elif negative == positive:
            raise ValueError(f"negative_class and positive_class are both {positive!r}")


class DriftSpec(SpecModel):
    reference_size: int = Field(default=2000, ge=50)
    window_size: int = Field(default=1000, ge=50)
    p_value: float = Field(default=0.01, gt=0, lt=1)
    correction: Literal["holm", "bonferroni", "none"] = "holm"
    psi_warning: float = Field(default=0.1, ge=0)
    psi_critical: float = Field(default=0.25, ge=0)
    concept_detectors: list[Literal["adwin", "page_hinkley", "ddm"]] = Field(
        default_factory=lambda: ["adwin", "page_hinkley", "ddm"]
    )
    cooldown: DurationMs = 120_000


class CatchUpSpec(SpecModel):
    """After a concept drift: the online challenger learns faster and is judged on its prequential record.

    A challenger judged only as a shadow needs ``promotion.min_samples`` fresh labels before its
    one look, and by then the drifted champion has served thousands of events. In catch-up the
    online learner replays the examples since the estimated change point, learns each new label
    ``repeats`` times, and is published every ``publish_every_labels`` labels with the losses of
    its own test-then-train predictions on the events the champion scored live: paired,
    out-of-sample evidence the publisher can judge at once, at ``p_value``. The rollback watch
    guards the promotions this buys.

    ``repeats_decay="linear"`` lowers the repeats from ``repeats`` at the drift to 1 at the end,
    as a learning-rate schedule would: many repeats move an SGD model to the new concept quickly,
    but held to the end they keep its steps large and it jitters around the new optimum.

    ``replay_each_candidate`` makes every candidate of the catch-up a refit: the learner's model
    at the drift, with ``replay_passes`` passes over all the examples since the change point (as
    many as ``replay_backlog`` keeps). Replayed once, at the drift, the first candidate is near
    the best the labels allow, and the later ones are that model jittered by the repeats of
    each new label. Replaying more passes into the live model at every candidate instead would
    learn the first examples after the change dozens of times over (measured in
    docs/benchmarks.md: it cost Phishing five seeds of twelve).
    """

    labels: int = Field(default=0, ge=0)  # how long catch-up lasts after a concept drift; 0: never
    repeats: int = Field(default=1, ge=1, le=100)
    repeats_decay: Literal["linear", "none"] = "linear"
    publish_every_labels: int | None = Field(default=None, ge=10)  # None: half of promotion.min_samples
    replay_passes: int = Field(default=0, ge=0, le=100)
    replay_each_candidate: bool = True  # False: the replay happens once, at the drift
    replay_backlog: int = Field(default=1000, ge=60)
    p_value: float | None = Field(default=None, gt=0, lt=1)  # None: promotion.p_value


class RetrainSpec(SpecModel):
    online_publish_every_labels: int | None = Field(default=2000, ge=1)
    online_publish_every: PeriodMs | None = 60_000
    rebuild_on_drift: bool = True
    rebuild_window: int = Field(default=5000, ge=10)
    # An incremental learner trained once over a few thousand examples is far from converged:
    # more passes over the same window (shuffled) get a rebuilt linear model near what the data allows.
    rebuild_passes: int = Field(default=1, ge=1, le=100)
    holdout_share: float = Field(default=0.2, gt=0, lt=1)
    schedule: PeriodMs | None = None
    catch_up: CatchUpSpec = Field(default_factory=CatchUpSpec)


class PromotionSpec(SpecModel):
    metric: Literal["log_loss", "cost", "squared_error", "absolute_error", "zero_one"] = "log_loss"
    min_samples: int = Field(default=500, ge=10)
    p_value: float = Field(default=0.05, gt=0, lt=1)
    min_improvement: float = Field(default=0.0, ge=0)
    segment_min_samples: int = Field(default=100, ge=1)
    segment_max_regression: float = Field(default=0.05, ge=0)
    canary_weight: Share = 0.0
    rollback_margin: float = Field(default=0.02, ge=0)
    rollback_min_samples: int = Field(default=300, ge=10)
    # 1.0: any regression beyond the margin rolls back, significant or not.
    rollback_p_value: float = Field(default=0.05, gt=0, le=1)


class StalenessSpec(SpecModel):
    max_model_age: PositiveDurationMs = 86_400_000
    max_label_silence: PositiveDurationMs = 600_000
    max_metric_decay: float = Field(default=0.05, ge=0)
