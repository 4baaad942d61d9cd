"""Fold versions: a new scoring rule deployed without downtime.

The code knows the current fold version and the one before it (``projections.rules``); the live
tables record the version that built them (``checkpoints.fold_version``). A processor that
starts with a newer current version than live's (``plan``):

1. keeps the live tables current with the old rule: its owners fold with live's version;
2. builds the new version in a shadow from the log (``ProjectionBuilder``: ``replay --swap``
   with the new rule, one builder per deployment, behind the swap lock);
3. checks the shadow before it swaps: its checkpoints equal live's (the swap's own check), and
   it equals the pure fold of the new rule over the same log for a sample of users, every user
   when the log has few (``check_against_pure_fold``);
4. swaps it in with the pause ``replay --swap`` achieves, and records the new version on every
   checkpoint in the same transaction. A batch of the old rule locks its checkpoint first and
   finds the new version there: it is fenced (``FoldVersionChanged``), and whoever takes the
   partition next folds with the version it finds. A processor that does not know that version
   stops (``FoldVersionUnknown``): writers of the old version stop by fencing, not by hope.

``just status`` and ``GET /v1/stats`` show the version being served and each build with its
progress (``projection_builds``).
"""
