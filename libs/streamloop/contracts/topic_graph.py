"""The topic graph of docs/architecture.md, generated from the catalog so it cannot drift from it.

``render_topic_graph`` draws who writes and reads each topic (a Mermaid flowchart) and lists
the topics' contracts (a Markdown table). The doc holds the rendered block between two markers;
``--write`` refreshes it and ``--check`` fails when it is stale, so CI catches a catalog change
that forgot the docs::

    python -m streamloop.contracts.topic_graph --write docs/architecture.md
    python -m streamloop.contracts.topic_graph --check docs/architecture.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from streamloop.contracts.catalog import PIPELINE_REF, Catalog, TopicSpec, load_catalog
from streamloop.contracts.exceptions import ContractError
from streamloop.contracts.pipeline import load_pipeline
from streamloop.contracts.schemas import schemas_root

BEGIN = "<!-- topic-graph:begin -->"
END = "<!-- topic-graph:end -->"
COMMAND = "python -m streamloop.contracts.topic_graph --write docs/architecture.md"
# The input topic's name comes from a pipeline spec; the docs show the demo's.
DEFAULT_PIPELINE = Path("examples") / "card_fraud" / "pipeline.yaml"


def render_topic_graph(catalog: Catalog) -> str:
    """The generated block: a Mermaid flowchart (service → topic → service) and a topic table."""
    return "\n".join(
        [
            f"<!-- Generated from schemas/topics.yaml by `{COMMAND}`; do not edit by hand. -->",
            "",
            *_flowchart(catalog),
            "",
            *_table(catalog),
            "",
        ]
    )


def _flowchart(catalog: Catalog) -> list[str]:
    services: list[str] = []
    for topic in catalog:
        for service in (*topic.producers, *topic.consumers):
            if service not in services:
                services.append(service)
    lines = ["```mermaid", "flowchart LR"]
    lines += [f'    {_service_id(s)}["{s}"]' for s in services]
    lines += [f'    {_topic_id(t)}[("{t.name}")]' for t in catalog]
    for topic in catalog:
        lines += [f"    {_service_id(s)} --> {_topic_id(topic)}" for s in topic.producers]
        lines += [f"    {_topic_id(topic)} --> {_service_id(s)}" for s in topic.consumers]
    lines.append("```")
    return lines


def _table(catalog: Catalog) -> list[str]:
    lines = [
        "| Topic | Key | Partitions | Cleanup policy | Schema | Producers | Consumers |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in catalog:
        cells = [
            f"`{t.name}`",
            f"`{t.key}`",
            str(t.partitions),
            t.cleanup_policy,
            _schema_cell(t),
            ", ".join(t.producers),
            ", ".join(t.consumers),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _schema_cell(topic: TopicSpec) -> str:
    if topic.schema_ref.startswith(PIPELINE_REF) and topic.schema is not None:
        return f"the pipeline's input schema (demo: `{topic.schema.name}`)"
    return f"`{topic.schema_ref}`"


def _service_id(service: str) -> str:
    return "svc_" + re.sub(r"\W", "_", service)


def _topic_id(topic: TopicSpec) -> str:
    return "topic_" + re.sub(r"\W", "_", topic.role)


def generated_block(document: str) -> str:
    """The text between the markers of ``document``."""
    start, end = _marker_span(document)
    return document[start:end]


def replace_block(document: str, block: str) -> str:
    """``document`` with the text between its markers replaced by ``block``."""
    start, end = _marker_span(document)
    return document[:start] + block + document[end:]


def _marker_span(document: str) -> tuple[int, int]:
    begin = document.find(BEGIN)
    end = document.find(END, begin + 1)
    if begin < 0 or end < 0:
        raise ValueError(f"the document has no {BEGIN} … {END} block")
    start = begin + len(BEGIN)
    return start + 1 if document.startswith("\n", start) else start, end


def render_for(pipeline_path: Path) -> str:
    return render_topic_graph(load_catalog(load_pipeline(pipeline_path)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamloop.contracts.topic_graph", description=__doc__.split("\n")[0]
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="DOC", type=Path, help="rewrite the generated block of DOC")
    action.add_argument("--check", metavar="DOC", type=Path, help="exit 1 if DOC's block is stale")
    parser.add_argument(
        "--pipeline", type=Path, default=schemas_root().parent / DEFAULT_PIPELINE,
        help="pipeline spec naming the input topic (default: the card-fraud demo)",
    )
    args = parser.parse_args(argv)
    try:
        block = render_for(args.pipeline)
        if args.write is None and args.check is None:
            sys.stdout.write(block)
            return 0
        path = args.write or args.check
        document = path.read_text()
        if args.write is not None:
            path.write_text(replace_block(document, block))
            return 0
        if generated_block(document) != block:
            print(f"{path}: the topic graph is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    except (OSError, ValueError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
