"""The pipeline spec: the demo loads, and every kind of mistake names the field it is about."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamloop.contracts import PipelineSpec, PipelineSpecError, load_pipeline
from streamloop.contracts.feature_specs import MAX_TEXT_LENGTH

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "examples" / "card_fraud"
DEMO_SPEC = DEMO_DIR / "pipeline.yaml"


def _demo() -> dict[str, Any]:
    spec = yaml.safe_load(DEMO_SPEC.read_text())
    spec["input"]["schema"] = str(DEMO_DIR / "transaction.avsc")  # the copy lives elsewhere
    return spec


def _write(tmp_path: Path, spec: Any, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _error(tmp_path: Path, change: Callable[[dict[str, Any]], Any]) -> str:
    spec = copy.deepcopy(_demo())
    change(spec)
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(_write(tmp_path, spec))
    return str(caught.value)


def test_demo_spec_loads(demo_pipeline: PipelineSpec) -> None:
    assert demo_pipeline.name == "card-fraud"
    assert demo_pipeline.input.entity_key == "card_id"
    assert demo_pipeline.features.allowed_lateness == 30_000
    assert demo_pipeline.labels.join_horizon == 600_000
    assert demo_pipeline.features.aggregations[5].window.hop == 600_000
    assert demo_pipeline.model.estimator == "river.linear_model.LogisticRegression"
    assert demo_pipeline.input_schema().name == "examples.payments.Transaction"


def test_the_demo_spec_validates_when_copied(tmp_path: Path) -> None:
    assert load_pipeline(_write(tmp_path, _demo())).name == "card-fraud"


def _set_window(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["features"]["aggregations"][index]["window"].update(changes)


def _model(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["model"].update(changes)


def _no_cost_matrix(spec: dict[str, Any]) -> None:
    spec["promotion"]["metric"] = "cost"
    del spec["model"]["cost_matrix"]


W0, W1, W2, W5 = (f"features.aggregations[{i}].window" for i in (0, 1, 2, 5))
MISTAKES = [
    pytest.param(_set_window(0, kind="hopping"), f"{W0}.hop", "required", id="hopping-without-hop"),
    pytest.param(_set_window(5, hop="2h"), f"{W5}.hop", "longer than size", id="hop-longer-than-size"),
    pytest.param(_set_window(1, hop="5m"), f"{W1}.hop", "only hopping", id="hop-on-sliding"),
    pytest.param(_set_window(2, kind="weekly"), f"{W2}.kind", "tumbling", id="unknown-window-kind"),
    pytest.param(_model(estimator="os.system"), "model.estimator", "river", id="non-river-estimator"),
    pytest.param(_model(preprocessing=["sklearn.preprocessing.Scaler"]), "model.preprocessing[0]", "river",
                 id="non-river-preprocessing"),
    pytest.param(_model(estimatr="river.tree.HoeffdingTreeClassifier"), "model.estimatr", "Extra inputs",
                 id="extra-key"),
    pytest.param(lambda s: s.update(promtion={"metric": "cost"}), "promtion", "Extra inputs",
                 id="extra-top-level-key"),
    pytest.param(lambda s: s["features"].update(allowed_lateness="30 parsecs"), "features.allowed_lateness",
                 "not a duration", id="bad-duration"),
    pytest.param(lambda s: s["staleness"].update(max_model_age=-5), "staleness.max_model_age",
                 "greater than 0", id="negative-duration"),
    # Not "off": a rebuild, or an online candidate, at every tick.
    pytest.param(lambda s: s["retrain"].update(schedule=0), "retrain.schedule",
                 "must be a positive duration, not 0 (0 would fire at every tick); null turns it off",
                 id="schedule-of-0"),
    pytest.param(lambda s: s["retrain"].update(online_publish_every="0s"), "retrain.online_publish_every",
                 "must be a positive duration, not '0s'", id="online-publish-every-0"),
    pytest.param(lambda s: s["input"]["validation"]["amount"].update(min=10, max=1),
                 "input.validation.amount.min", "greater than max", id="min-above-max"),
    pytest.param(_no_cost_matrix, "promotion.metric", "cost_matrix", id="cost-metric-without-costs"),
    pytest.param(lambda s: s["input"].pop("event_time"), "input.event_time", "Field required",
                 id="missing-required-field"),
    pytest.param(_model(name="Fraud Model!"), "model.name", "pattern", id="bad-model-name"),
    pytest.param(lambda s: s["features"]["passthrough"].append({"field": "amount"}), "features",
                 "repeated: amount", id="duplicate-feature-names"),
    pytest.param(lambda s: s["features"]["aggregations"][0].update(name="amount=max"), "features",
                 "must not contain '='", id="one-hot-separator-in-a-feature-name"),
    pytest.param(lambda s: s["promotion"].update(canary_weight=1.5), "promotion.canary_weight",
                 "less than or equal to 1", id="share-out-of-range"),
    pytest.param(_model(positive_class="1"), "model", "'1' needs a negative_class", id="positive-without-negative"),
    pytest.param(_model(positive_class="fraud", negative_class="fraud"), "model", "both 'fraud'",
                 id="negative-same-as-positive"),
    pytest.param(_model(positive_class=None, negative_class="0"), "model", "negative_class needs a positive_class",
                 id="negative-without-positive"),
]


def _categorical(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["features"]["categorical"][index].update(changes)


# The demo's categorical[0] is merchant_category, one-hot; categorical[1] is country, passed through.
ONE_HOT_ROOM = MAX_TEXT_LENGTH - len("merchant_category=")
TOO_LONG = [
    pytest.param(lambda s: s["features"]["aggregations"][0].update(name="a" * (MAX_TEXT_LENGTH + 1)),
                 "features.aggregations[0].name", id="aggregation-name"),
    pytest.param(lambda s: s["features"]["passthrough"][0].update(name="p" * (MAX_TEXT_LENGTH + 1)),
                 "features.passthrough[0].name", id="passthrough-name"),
    pytest.param(lambda s: s["features"]["passthrough"][0].update(field="f" * (MAX_TEXT_LENGTH + 1)),
                 "features.passthrough[0].field", id="passthrough-field-as-its-name"),
    pytest.param(_categorical(1, name="c" * (MAX_TEXT_LENGTH + 1)), "features.categorical[1].name",
                 id="categorical-name"),
    pytest.param(_categorical(0, categories=["fuel", "x" * (ONE_HOT_ROOM + 1)]),
                 "features.categorical[0].categories[1]", id="one-hot-column-of-a-category"),
    pytest.param(_categorical(1, categories=["DE", "x" * (MAX_TEXT_LENGTH + 1)]),
                 "features.categorical[1].categories[1]", id="passthrough-category"),
    pytest.param(_categorical(0, name="m" * (MAX_TEXT_LENGTH - len("=__other__") + 1), categories=["a"],
                              unknown="other"),
                 "features.categorical[0].name", id="one-hot-other-column"),
]


@pytest.mark.parametrize(("change", "path"), TOO_LONG)
def test_a_feature_name_or_category_longer_than_a_model_takes_is_refused(tmp_path: Path, change, path: str) -> None:
    # Served, such a name or column fails every vector that carries it, in the scorer.
    error = _error(tmp_path, change)
    assert f"\n  {path}: " in error and f"longer than the {MAX_TEXT_LENGTH} a model takes" in error, error
    assert len(error) < 400, "the message does not echo the long text"


def test_names_and_categories_that_just_fit_load(tmp_path: Path) -> None:
    spec = _demo()
    spec["features"]["aggregations"][0]["name"] = "a" * MAX_TEXT_LENGTH
    spec["features"]["categorical"][0]["categories"] = ["x" * ONE_HOT_ROOM]
    spec["features"]["categorical"][1]["categories"] = ["y" * MAX_TEXT_LENGTH]
    spec["features"]["categorical"][1]["unknown"] = "other"
    features = load_pipeline(_write(tmp_path, spec)).features
    assert features.categorical[0].categories == ["x" * ONE_HOT_ROOM]


@pytest.mark.parametrize(("given", "positive", "negative"), [
    ({"positive_class": "true"}, "true", "false"),
    ({"positive_class": True}, "true", "false"),  # YAML's unquoted true
    ({"positive_class": "False"}, "false", "true"),
    ({"positive_class": 1, "negative_class": 0}, "1", "0"),
    ({"positive_class": "fraud", "negative_class": "legit"}, "fraud", "legit"),
    ({"positive_class": None}, None, None),
])
def test_the_two_classes_of_a_binary_model(tmp_path: Path, given: dict[str, Any], positive, negative) -> None:
    spec = _demo()
    spec["model"].update(given)
    model = load_pipeline(_write(tmp_path, spec)).model
    assert (model.positive_class, model.negative_class) == (positive, negative)


@pytest.mark.parametrize(("change", "path", "message"), MISTAKES)
def test_each_mistake_names_its_field(tmp_path: Path, change, path: str, message: str) -> None:
    error = _error(tmp_path, change)
    assert f"\n  {path}: " in error, error
    assert message in error, error


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda s: s["input"].update(entity_key="account_id"), "input.entity_key"),
        (lambda s: s["features"]["aggregations"][3].update(field="amnt"), "features.aggregations[3].field"),
        (lambda s: s.update(segments=["country", "tier"]), "segments[1]"),
        (lambda s: s["input"]["validation"].update(ghost={"required": True}), "input.validation.ghost"),
    ],
    ids=["entity-key", "aggregation-field", "segment", "validation-field"],
)
def test_fields_missing_from_the_input_schema_are_named(tmp_path: Path, change, path: str) -> None:
    error = _error(tmp_path, change)
    assert f"{path}: no field" in error and "examples.payments.Transaction" in error, error


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def two_mistakes(spec: dict[str, Any]) -> None:
        spec["model"]["estimator"] = "os.system"
        spec["features"]["ttl"] = "forever"

    error = _error(tmp_path, two_mistakes)
    assert "model.estimator: " in error and "features.ttl: " in error, error


def test_an_unquoted_no_in_allowed_is_refused_where_it_is(tmp_path: Path) -> None:
    # YAML 1.1 reads the unquoted NO as False: served, every Norwegian event was dead-lettered.
    spec = _demo()
    spec["input"]["validation"]["country"] = {"required": True, "allowed": ["DE", "FR", "@NO@", "SE"]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False).replace("'@NO@'", "NO").replace("@NO@", "NO"))
    assert yaml.safe_load(path.read_text())["input"]["validation"]["country"]["allowed"][2] is False
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(path)
    error = str(caught.value)
    assert "input.validation.country.allowed[2]: False is a boolean" in error and "quote it" in error, error
    assert "allowed[0]" not in error and "allowed[3]" not in error, error


@pytest.mark.parametrize(
    ("field", "allowed", "index"),
    [
        ("amount", [1, "2"], 1),  # a double: text never equals it
        ("amount", [True], 0),
        ("card_present", [True, 1], 1),  # a boolean: True == 1 in Python, never in an event
        ("country", ["DE", 49], 1),
        ("country", [1.5], 0),
    ],
    ids=["text-for-double", "boolean-for-double", "number-for-boolean", "number-for-string", "fraction-for-string"],
)
def test_an_allowed_value_the_field_never_holds_is_refused(tmp_path: Path, field: str, allowed: list[Any],
                                                            index: int) -> None:
    error = _error(tmp_path, lambda s: s["input"]["validation"].update({field: {"allowed": allowed}}))
    assert f"input.validation.{field}.allowed[{index}]: " in error, error
    assert error.count(".allowed[") == 1, error


def test_allowed_values_that_fit_their_field_load(tmp_path: Path) -> None:
    spec = _demo()
    spec["input"]["validation"].update(
        country={"allowed": ["DE", "NO"]},
        amount={"allowed": [1, 2.5]},  # an integer fits a double
        card_present={"allowed": [True]},
        distance_from_home_km={"allowed": [0, 10.0]},  # a union with null
    )
    assert load_pipeline(_write(tmp_path, spec)).input.validation["country"].allowed == ["DE", "NO"]


def test_invalid_yaml_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: card-fraud\ninput: {topic: [unclosed\n")
    with pytest.raises(PipelineSpecError, match="not valid YAML"):
        load_pipeline(path)


def test_a_spec_that_is_not_a_mapping_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineSpecError, match="mapping"):
        load_pipeline(_write(tmp_path, ["name", "card-fraud"]))


def test_a_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineSpecError, match="cannot read"):
        load_pipeline(tmp_path / "absent.yaml")


def test_a_missing_input_schema_is_a_contract_error(tmp_path: Path) -> None:
    spec = _demo()
    spec["input"]["schema"] = "nowhere.avsc"
    from streamloop.contracts import ContractError

    with pytest.raises(ContractError, match=r"nowhere\.avsc"):
        load_pipeline(_write(tmp_path, spec))


TOML_SPEC = """\
name = "card-fraud-toml"
segments = ["country"]

[input]
topic = "payments.transaction.v1"
schema = "transaction.avsc"
event_id = "transaction_id"
entity_key = "card_id"
event_time = "timestamp"

[input.validation.amount]
required = true
min = 0
max = 1_000_000

[features]
allowed_lateness = "30s"

[[features.aggregations]]
name = "amount_mean_1h"
field = "amount"
agg = "mean"
window = { kind = "hopping", size = "1h", hop = "10m" }

[[features.passthrough]]
field = "amount"

[model]
name = "fraud"
task = "classification"
estimator = "river.linear_model.LogisticRegression"
params = { l2 = 0.0001 }

[promotion]
metric = "log_loss"
"""


def test_toml_spec_loads(tmp_path: Path) -> None:
    (tmp_path / "transaction.avsc").write_text((DEMO_DIR / "transaction.avsc").read_text())
    path = tmp_path / "pipeline.toml"
    path.write_text(TOML_SPEC)
    spec = load_pipeline(path)
    assert spec.name == "card-fraud-toml"
    assert spec.input_schema_file == (tmp_path / "transaction.avsc").resolve()
    assert spec.features.allowed_lateness == 30_000
    assert spec.features.aggregations[0].window.hop == 600_000
    assert spec.input.validation["amount"].max == 1_000_000
    assert spec.model.params == {"l2": 0.0001}


def test_invalid_toml_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.toml"
    path.write_text('name = "x"\n[input\n')
    with pytest.raises(PipelineSpecError, match="not valid TOML"):
        load_pipeline(path)


def test_toml_mistakes_name_their_field_too(tmp_path: Path) -> None:
    (tmp_path / "transaction.avsc").write_text((DEMO_DIR / "transaction.avsc").read_text())
    path = tmp_path / "pipeline.toml"
    path.write_text(TOML_SPEC.replace('hop = "10m"', 'hop = "10 minutes"'))
    with pytest.raises(PipelineSpecError, match=r"features\.aggregations\[0\]\.window\.hop: "):
        load_pipeline(path)
