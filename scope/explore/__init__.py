"""Reading a store as a researcher: the feature list and its search, LLM explanations and their
scores, and Neuronpedia import/export. Above `scope.store`; knows no model."""
