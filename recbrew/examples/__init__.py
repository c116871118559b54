"""Examples: ranking requests built from a Corpus and the task catalog, rendered and featurized."""
