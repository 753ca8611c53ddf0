"""Prefect flows, deployments and the `azr` entry point: wiring only."""
