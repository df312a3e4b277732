"""What can be patched: components, position groups and the Site that names one patch.

Plain data, no torch: the engine, the setters, the attribution methods and the CLI's choices all read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

COMPONENTS = ("resid_pre", "resid_post", "attn", "mlp")
NEGATIVE_KINDS = ("hard", "random", "any")  # the non-relevant passage of a clean/corrupted pair
PERTURBATIONS = ("negative", "inject")  # how the corrupted prompt differs (see pairs.py)


POSITION_GROUPS = ("instruction", "query", "document", "last", "all")
# First-order estimators of a site's patching effect (atp.py, ig.py), all on the same clean/corrupted runs.
ESTIMATORS = ("atp", "atp-star", "relp", "ig")
UNSIGNED_ESTIMATORS = ("atp-star",)  # estimate |IE| (for ranking sites), validated against the exact |IE|
# RelP's LRP rules (relp.py): LN-rule, Identity rule, Half rule (gated MLPs), AH-rule; the paper's set is all four.
LRP_RULES = ("norm", "activation", "gate", "attention")
# Site types the estimators are validated on, by component (z: one head's output; scores: one head's weights).
SITE_TYPES = {"resid_pre": "resid", "resid_post": "resid", "attn": "attn", "mlp": "mlp", "z": "head",
              "scores": "score block"}


@dataclass(frozen=True)
class Site:
    component: str  # resid_pre, resid_post, attn, mlp; z or scores with a head, per head
    layer: int
    group: str  # a position group, or "all"; for scores a block "rows>columns" (see scores.py)
    head: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        """The (component, layer) whose hook writes the patch: a score patch is an edit of the head's output."""
        return ("z" if self.component == "scores" else self.component), self.layer

    @property
    def rows(self) -> str:
        """The position group the patch writes to."""
        return self.group.split(">")[0]


def all_sites(n_layers: int, components: Sequence[str] = COMPONENTS,
              groups: Sequence[str] = POSITION_GROUPS) -> list[Site]:
    """Every component of every layer at each position group (component outermost, then layer, then group)."""
    return [Site(c, layer, g) for c in components for layer in range(n_layers) for g in groups]


HEAD_GROUPS = ("last", "query", "all")


def head_sites(n_layers: int, n_heads: int, groups: Sequence[str] = HEAD_GROUPS) -> list[Site]:
    """Every head of every layer at each position group (group outermost, then layer, then head)."""
    return [Site("z", layer, g, h) for g in groups for layer in range(n_layers) for h in range(n_heads)]
