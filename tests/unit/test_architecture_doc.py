"""docs/architecture.md's topic graph is generated from the catalog; a stale copy fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamloop.contracts import PipelineSpec, load_catalog
from streamloop.contracts.topic_graph import (
    BEGIN,
    COMMAND,
    END,
    generated_block,
    main,
    render_topic_graph,
    replace_block,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def rendered(demo_pipeline: PipelineSpec) -> str:
    return render_topic_graph(load_catalog(demo_pipeline))


def test_architecture_doc_topic_graph_is_fresh(rendered: str) -> None:
    assert generated_block(DOC.read_text()) == rendered, f"docs/architecture.md is stale: run `{COMMAND}`"


def test_architecture_doc_has_its_sections() -> None:
    headings = [line[3:] for line in DOC.read_text().splitlines() if line.startswith("## ")]
    assert headings == ["Services", "Topics", "Delivery guarantees", "State and scaling",
                        "Where faust-streaming is used"]


def test_graph_draws_every_topic_and_its_services(demo_pipeline: PipelineSpec, rendered: str) -> None:
    assert "```mermaid\nflowchart LR\n" in rendered
    for topic in load_catalog(demo_pipeline):
        assert f'("{topic.name}")' in rendered
        assert f"| `{topic.name}` | `{topic.key}` | {topic.partitions} | {topic.cleanup_policy} |" in rendered
        node = "topic_" + topic.role
        for producer in topic.producers:
            assert f"svc_{producer.replace('-', '_')} --> {node}\n" in rendered
        for consumer in topic.consumers:
            assert f"{node} --> svc_{consumer.replace('-', '_')}\n" in rendered
    assert "payments.transaction.v1" in rendered, "the demo spec names the input topic"


def test_write_then_check(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    doc.write_text(f"# Title\n\n{BEGIN}\nold graph\n{END}\n\nprose after\n")
    assert main(["--check", str(doc)]) == 1
    assert main(["--write", str(doc)]) == 0
    assert main(["--check", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\n") and text.endswith(f"{END}\n\nprose after\n")
    assert "old graph" not in text


def test_a_doc_without_markers_is_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    doc.write_text("# no markers\n")
    assert main(["--check", str(doc)]) == 2
    with pytest.raises(ValueError, match="topic-graph:begin"):
        replace_block(doc.read_text(), "x")
