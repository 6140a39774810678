"""The BentoML HTTP service (ONNX Runtime, no torch): see serving/service.py for the endpoints."""
