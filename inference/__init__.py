"""Torch-free inference: what the service, the catalogue engines and the load-test yardstick share.

- `inference.decode` / `inference.jpeg`: uploaded or stored bytes -> RGB pixels, within memory limits
- `inference.runtime`: an exported model in ONNX Runtime, verified against its model card
- `inference.scoring`: logits -> calibrated probabilities, the not-a-galaxy score and flag, 8-view averaging
- `inference.explain`: the attention-map variant of an exported model
- `inference.errors`: the one error type for input and model problems (kind + HTTP-like status)

It stands on the core (`galaxyvit/`) and imports nothing else of the project: `serving/` and `catalog/`
both stand on it and never import each other.
"""
