"""Projections: the pure fold, the tables that store it, migrations and the read queries."""
