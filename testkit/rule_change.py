"""A rule change for the tests (``FOLD_RULES=testkit.rule_change:RULES``): fold version 2,
where a child's ``sad`` turn costs 2 points instead of 1. The contract's rule stays version 1."""

from __future__ import annotations

from typing import Final

from projections.fold import CONTRACT_RULES, RATING_DELTA, SENTIMENT_DELTA, FoldRules

SAD_COSTS_TWO: Final = FoldRules(
    2,
    {**SENTIMENT_DELTA, "sad": -2},
    RATING_DELTA,
    "a child's sad turn costs 2 points (was 1)",
)
#: The previous version and the new one, as a deployment of the change would carry them.
RULES: Final = (CONTRACT_RULES, SAD_COSTS_TWO)
#: The setting that selects them.
SETTING: Final = "testkit.rule_change:RULES"
