"""What the tests and the benchmark share: real services in isolated deployments (a vhost and a
database each), the independent reference fold, and processor processes.

Not part of the product: nothing under ``schemas``, ``projections`` or ``processor`` imports it.
"""
