"""The fold versions a deployment knows: the current scoring rule and the one before it. Pure.

A rule change (``sad`` costs 2 points instead of 1, say) is a new ``FoldRules`` with the next
version number. The code keeps the previous version beside it, so one processor can keep the
live tables current with the old rule while it builds the new one in a shadow, and swap it in
once it is checked (``processor.versions``). Each deployment's live tables record the version
that built them.

The built-in versions are ``BUILT_IN``. The ``FOLD_RULES`` setting may name others
(``module:attribute``, a sequence of ``FoldRules``): how a rule change is rehearsed before it
ships, and how a test brings one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from projections.fold import CONTRACT_RULES, FoldRules

#: The fold versions this code ships, oldest first.
BUILT_IN: Final[tuple[FoldRules, ...]] = (CONTRACT_RULES,)


@dataclass(frozen=True)
class RuleVersions:
    """The current fold version and, when there is one, the version before it.

    Raises:
        ValueError: no version, more than two, or versions that do not follow each other.
    """

    versions: tuple[FoldRules, ...]

    def __post_init__(self) -> None:
        numbers = [rules.version for rules in self.versions]
        if not 1 <= len(numbers) <= 2:  # noqa: PLR2004 - the current and the previous
            raise ValueError(
                f"fold rules: the current version and at most the previous, not {numbers}"
            )
        if len(numbers) == 2 and numbers[1] != numbers[0] + 1:  # noqa: PLR2004
            raise ValueError(f"fold rules: versions must follow each other, not {numbers}")

    @property
    def current(self) -> FoldRules:
        """The newest rule: what this code builds and serves once it is live."""
        return self.versions[-1]

    @property
    def previous(self) -> FoldRules | None:
        """The rule before it (kept so live can stay current while the new one is built)."""
        return self.versions[0] if len(self.versions) > 1 else None

    def get(self, version: int) -> FoldRules | None:
        """The rule of ``version``, None when this code does not know it."""
        return next((rules for rules in self.versions if rules.version == version), None)

    def describe(self) -> str:
        """``"1 and 2"`` or ``"1"``: the versions this code knows."""
        return " and ".join(str(rules.version) for rules in self.versions)


def rule_versions(rules: Sequence[FoldRules]) -> RuleVersions:
    """The last two of ``rules`` (oldest first) as ``RuleVersions``."""
    ordered = tuple(sorted(rules, key=lambda r: r.version))
    return RuleVersions(ordered[-2:])


def load_rule_versions(spec: str = "") -> RuleVersions:
    """The fold versions of the ``FOLD_RULES`` setting: ``""`` for ``BUILT_IN``, or
    ``module:attribute`` naming a sequence of ``FoldRules``.

    Raises:
        ValueError: the module or attribute is missing, or holds no valid versions (the
            message names the setting's value).
    """
    if not spec:
        return rule_versions(BUILT_IN)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"FOLD_RULES={spec!r} must be module:attribute")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"FOLD_RULES={spec!r}: {exc}") from exc
    if not isinstance(value, Sequence) or not all(isinstance(r, FoldRules) for r in value):
        raise ValueError(f"FOLD_RULES={spec!r} must name a sequence of FoldRules")
    return rule_versions(value)
