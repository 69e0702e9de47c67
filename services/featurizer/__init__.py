"""The featurizer: input events in, one point-in-time correct FeatureVector per event out, plus the
entity's latest features in the online store (docs/featurizer.md)."""
