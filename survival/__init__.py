"""GCE Survival Kit orchestrator: config, compute client, images, code push, launch, watch, logs."""
