"""What a processor does about fold versions, and which versions a deployment knows."""

from __future__ import annotations

import pytest

from processor.versions.builds import plan
from processor.versions.errors import FoldVersionUnknown
from projections.fold import CONTRACT_RULES, RATING_DELTA, SENTIMENT_DELTA, FoldRules
from projections.rules import load_rule_versions, rule_versions
from testkit import rule_change

BOTH = rule_versions(rule_change.RULES)
OLD = rule_versions([CONTRACT_RULES])


def test_live_at_the_current_version_is_served_and_nothing_is_built() -> None:
    decided = plan(2, BOTH)
    assert (decided.serve.version, decided.build) == (2, None)


def test_live_at_the_previous_version_is_served_while_the_current_is_built() -> None:
    decided = plan(1, BOTH)
    assert decided.serve is CONTRACT_RULES
    assert decided.build is rule_change.SAD_COSTS_TWO


@pytest.mark.parametrize(
    ("live", "known", "hint"),
    [(2, OLD, "deploy a processor that knows it"), (7, BOTH, "deploy"), (0, OLD, "rebuild")],
)
def test_a_version_this_code_cannot_serve_stops_it(live: int, known: object, hint: str) -> None:
    with pytest.raises(FoldVersionUnknown, match=hint) as refused:
        plan(live, known)  # type: ignore[arg-type]
    assert f"fold version {live}" in str(refused.value)


def test_an_older_version_than_the_previous_cannot_be_kept_current() -> None:
    three = FoldRules(3, SENTIMENT_DELTA, RATING_DELTA)
    known = rule_versions([*rule_change.RULES, three])
    assert [r.version for r in known.versions] == [2, 3]
    with pytest.raises(FoldVersionUnknown, match="rebuild with `just replay --swap` first"):
        plan(1, known)


def test_the_setting_names_the_versions_or_fails_clearly() -> None:
    assert load_rule_versions("").current is CONTRACT_RULES
    assert load_rule_versions(rule_change.SETTING) == BOTH
    for wrong in ("no-colon", "testkit.rule_change:MISSING", "no_such_module:RULES"):
        with pytest.raises(ValueError, match="FOLD_RULES"):
            load_rule_versions(wrong)
    with pytest.raises(ValueError, match="sequence of FoldRules"):
        load_rule_versions("testkit.rule_change:SETTING")


def test_rules_must_cover_every_label_and_rating() -> None:
    with pytest.raises(ValueError, match="every sentiment label"):
        FoldRules(2, {"happy": 1}, RATING_DELTA)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="follow each other"):
        rule_versions([CONTRACT_RULES, FoldRules(3, SENTIMENT_DELTA, RATING_DELTA)])
