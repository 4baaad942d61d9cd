"""Processor: topology, publishing, partition owners, batching, checkpoints, leases, CLI and API."""
