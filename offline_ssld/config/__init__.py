"""Configuration, one module per concern: `loading` (files, merging, `-o` overrides, `get`),
`specs` (typed model and data specs), `offline` (the `Offline` section) and `paddleclas`
(which PaddleClas keys a stage honours, and the `overlay` summary)."""
