"""The language model: loading Gemma 2 / Gemma 3 as TransformerLens bridges, hook sites,
activation capture and temporary hooks. Knows nothing of SAEs, stores or the CLI."""
