"""Reading a store as a researcher: the feature list and its search, LLM explanations and their
scores (`explain`, `sampling`, `scoring`, `chat`, `writing`), and Neuronpedia import/export
(`np_import`, `np_export`, `np_format`). Above `scope.pipeline`; `replay` loads the store's
model and SAE again where the store lacks something (negatives to verify, full logit vectors)."""
