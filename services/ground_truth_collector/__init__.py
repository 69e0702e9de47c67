"""The ground-truth collector: joins labels to the features and predictions of their event.

Emits LabeledExample records, UnmatchedLabel records for labels it cannot join, and prequential
MetricSnapshot records per model version, window and segment (docs/ground-truth-collector.md).
"""
