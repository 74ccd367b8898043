"""Trainer runtime: runs on the instance. Must never import the orchestrator (survival)."""
