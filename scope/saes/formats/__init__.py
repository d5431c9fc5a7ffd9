"""SAE file layouts, one module each: what the files are called, how their fields map onto
`SAEConfig`, and how their tensors are read (and, for the native layout, written).

Each reader returns an `SAEConfig` and a `{name: tensor}` dict in scope's parameter names
(`W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold`, `affine_skip`); `scope.saes.loading` keeps the
registry of which layout a path is and builds the `JumpReLUSAE`. Nothing here knows the module.

- `native`: `cfg.json` + `sae_weights.safetensors` (scope's own folders and SAELens 6 folders)
- `npz`: Gemma Scope 1 `params.npz`
- `gs2`: Gemma Scope 2 `config.json` + `params.safetensors`
- `tensors`: safetensors reading (memory-mapped, cast one tensor at a time) and value checks
"""
