from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("entity_id", "numeric_features", "categorical_features", "explain")
    class NumericFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CategoricalFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    numeric_features: _containers.ScalarMap[str, float]
    categorical_features: _containers.ScalarMap[str, str]
    explain: bool
    def __init__(self, entity_id: _Optional[str] = ..., numeric_features: _Optional[_Mapping[str, float]] = ..., categorical_features: _Optional[_Mapping[str, str]] = ..., explain: _Optional[bool] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("predicted_class", "probabilities", "value", "action")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    predicted_class: str
    probabilities: _containers.ScalarMap[str, float]
    value: float
    action: str
    def __init__(self, predicted_class: _Optional[str] = ..., probabilities: _Optional[_Mapping[str, float]] = ..., value: _Optional[float] = ..., action: _Optional[str] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("feature", "numeric_value", "categorical_value", "contribution")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    CATEGORICAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    numeric_value: float
    categorical_value: str
    contribution: float
    def __init__(self, feature: _Optional[str] = ..., numeric_value: _Optional[float] = ..., categorical_value: _Optional[str] = ..., contribution: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("method", "contributions")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    method: str
    contributions: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    def __init__(self, method: _Optional[str] = ..., contributions: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("entity_id", "prediction", "model_name", "model_version", "feature_freshness_ms", "explanation", "default_prediction", "scored_at_ms")
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FRESHNESS_MS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SCORED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    entity_id: str
    prediction: Prediction
    model_name: str
    model_version: str
    feature_freshness_ms: int
    explanation: Explanation
    default_prediction: bool
    scored_at_ms: int
    def __init__(self, entity_id: _Optional[str] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., feature_freshness_ms: _Optional[int] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., default_prediction: _Optional[bool] = ..., scored_at_ms: _Optional[int] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: ScoreResponse
    error: ScoreError
    def __init__(self, response: _Optional[_Union[ScoreResponse, _Mapping]] = ..., error: _Optional[_Union[ScoreError, _Mapping]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ...) -> None: ...
