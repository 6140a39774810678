"""The BentoML HTTP service (ONNX Runtime, no torch): the endpoints are in serving/endpoints.py (what they
do in serving/routes.py), the deployment in serving/deployment.py."""
