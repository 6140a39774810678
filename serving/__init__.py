"""The BentoML HTTP service (ONNX Runtime, no torch): the endpoints are in serving/routes.py,
the deployment in serving/deployment.py."""
