"""Dictionaries: the JumpReLU SAE / transcoder module, its file formats and loaders, and the
offline Gemma Scope registry (`registry/`, package data). Reads activations' shapes from
`scope.model` only to check a site's width; never imports the pipeline or the store.

This package's `__init__` stays empty so the numpy-only store can read `saes.releases`."""
