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
# First-order estimators of a site's patching effect (atp.py, ig.py, ...), all on the same clean/corrupted runs;
# atp-nearest (nearest.py) is relscope's own: residual sites linearised about the nearer of the two runs.
ESTIMATORS = ("atp", "atp-star", "relp", "ig", "atp-qk", "atp-nearest")
UNSIGNED_ESTIMATORS = ("atp-star",)  # estimate |IE| (for ranking sites), validated against the exact |IE|
# RelP's LRP rules (relp.py): LN-rule, Identity rule, Half rule (gated MLPs), AH-rule; the paper's set is all four.
LRP_RULES = ("norm", "activation", "gate", "attention")
# Sites patched as an exact change of head outputs computed from the recorded attention (scores.py): a head's
# weights on a block (scores), a head's query vectors (q), a key/value head's key vectors (k, AtP*'s key nodes).
QK_COMPONENTS = ("q", "k")
ATTENTION_EDITS = ("scores", *QK_COMPONENTS)
# The estimators defined on query/key sites: atp (first order), atp-qk (AtP*'s QK fix alone, signed), atp-star.
QK_ESTIMATORS = ("atp", "atp-qk", "atp-star")
# Site types the estimators are validated on, by component (z: one head's output; scores: one head's weights).
SITE_TYPES = {"resid_pre": "resid", "resid_post": "resid", "attn": "attn", "mlp": "mlp", "z": "head",
              "scores": "score block", "q": "query", "k": "key"}


@dataclass(frozen=True)
class Site:
    component: str  # resid_pre, resid_post, attn, mlp; z, scores or q with a head; k with a key/value head
    layer: int
    group: str  # a position group, or "all"; for scores a block "rows>columns" (see scores.py)
    head: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        """The (component, layer) whose hook writes the patch: a score, query or key patch is an edit of the
        head outputs it changes."""
        return ("z" if self.component in ATTENTION_EDITS else self.component), self.layer

    @property
    def rows(self) -> str:
        """The position group the patch writes to: a key patch changes what every later position reads."""
        return "all" if self.component == "k" else self.group.split(">")[0]


def all_sites(n_layers: int, components: Sequence[str] = COMPONENTS,
              groups: Sequence[str] = POSITION_GROUPS) -> list[Site]:
    """Every component of every layer at each position group (component outermost, then layer, then group)."""
    return [Site(c, layer, g) for c in components for layer in range(n_layers) for g in groups]


HEAD_GROUPS = ("last", "query", "all")


def head_sites(n_layers: int, n_heads: int, groups: Sequence[str] = HEAD_GROUPS) -> list[Site]:
    """Every head of every layer at each position group (group outermost, then layer, then head)."""
    return [Site("z", layer, g, h) for g in groups for layer in range(n_layers) for h in range(n_heads)]


def qk_sites(layers: Sequence[int], n_heads: int, n_kv_heads: int,
             groups: Sequence[str] = HEAD_GROUPS) -> tuple[list[Site], list[Site]]:
    """(query sites, key sites): every head's query vectors and every key/value head's key vectors at each position
    group (group outermost, then layer, then head), AtP*'s query and key nodes."""
    return ([Site("q", layer, g, h) for g in groups for layer in layers for h in range(n_heads)],
            [Site("k", layer, g, h) for g in groups for layer in layers for h in range(n_kv_heads)])
