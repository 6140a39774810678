"""Locust load tests of the galaxyvit service, with the raw ONNX Runtime engine as the yardstick."""
