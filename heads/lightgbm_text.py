"""A LightGBM text model checked line by line before LightGBM's own parser sees it.

LightGBM trusts the numbers of its text format: a child index past the tree loops forever or
reads out of bounds, a huge num_leaves aborts the process, a split feature past the input's
width is accepted. fit-head's boosters are plain numerical trees, so the checked grammar is
narrow: known header keys, numerical splits only, every child inside its tree and after its
parent, every node and leaf reached once, every split feature inside the declared width.
What LightGBM is then handed is the header and the trees alone (no `tree_sizes` offsets,
which it would trust to jump through the text; no parameter trailer, which prediction does
not need).
"""
from __future__ import annotations

import math

from cache.errors import UserError

MAX_LEAVES = 1 << 17  # LightGBM's own limit on num_leaves
MAX_FEATURES = 1 << 24
MAX_CLASSES = 10_000
HEADER_KEYS = {"version", "num_class", "num_tree_per_iteration", "label_index", "max_feature_idx",
               "objective", "feature_names", "feature_infos", "tree_sizes",
               "average_output", "monotone_constraints", "feature_importances"}
NODE_KEYS = ("split_feature", "split_gain", "threshold", "decision_type", "left_child",
             "right_child", "internal_value", "internal_weight", "internal_count")
LEAF_KEYS = ("leaf_value", "leaf_weight", "leaf_count")
OBJECTIVES = ("regression", "regression_l1", "huber", "fair", "poisson", "quantile", "mape",
              "gamma", "tweedie", "binary", "multiclass", "multiclassova", "cross_entropy")


class LightGBMModelError(UserError, ValueError):
    """A LightGBM text model that is not what fit-head writes."""


def checked_model_text(text: str, where: str) -> str:
    """The model text LightGBM may safely parse; LightGBMModelError says what is wrong."""
    def fail(why):
        raise LightGBMModelError(f"{where}: {why}; not a model fit-head wrote (damaged or "
                                 "crafted): refusing it. Fit the head again")

    body, sep, _ = text.partition("\nend of trees")
    if not sep:
        fail("no 'end of trees' line (cut off?)")
    blocks = body.split("\n\n")
    header = _pairs(blocks[0].splitlines()[1:], fail)
    if blocks[0].splitlines()[:1] != ["tree"] or set(header) - HEADER_KEYS:
        fail(f"unexpected header lines ({', '.join(sorted(set(header) - HEADER_KEYS)) or 'first line'})")
    n_class = _bounded(header.get("num_class"), 1, MAX_CLASSES, "num_class", fail)
    per_iteration = _bounded(header.get("num_tree_per_iteration"), 1, MAX_CLASSES,
                             "num_tree_per_iteration", fail)
    width = _bounded(header.get("max_feature_idx"), 0, MAX_FEATURES, "max_feature_idx", fail) + 1
    if header.get("objective", "").split(" ")[0] not in OBJECTIVES:
        fail(f"objective {header.get('objective')!r} is not one fit-head uses")
    if len(header.get("feature_names", "").split(" ")) != width:
        fail("feature_names do not match max_feature_idx")
    if per_iteration not in (1, n_class):
        fail("num_tree_per_iteration does not match num_class")
    trees = [b.strip("\n") for b in blocks[1:] if b.strip("\n")]
    for number, block in enumerate(trees):
        _check_tree(block, number, width, fail)
    if not trees or len(trees) % per_iteration:
        fail(f"{len(trees)} trees is not a whole number of iterations")
    kept = [line for line in blocks[0].splitlines() if not line.startswith("tree_sizes=")]
    return "\n".join(kept) + "\n\n" + "\n\n".join(trees) + "\n\n\nend of trees\n"


def _pairs(lines, fail) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or key in out:
            fail(f"line {line[:40]!r} is not key=value, or repeats a key")
        out[key] = value
    return out


def _bounded(text, low: int, high: int, name: str, fail) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= high:
        fail(f"{name}={text!r} is not a whole number in [{low}, {high}]")
    return value


def _numbers(text: str, count: int, name: str, fail, integer: bool) -> list:
    items = text.split(" ") if text else []
    if len(items) != count:
        fail(f"a tree's {name} has {len(items)} values, not {count}")
    try:
        values = [int(v) if integer else float(v) for v in items]
    except ValueError:
        fail(f"a tree's {name} holds something other than numbers")
    if not integer and any(math.isnan(v) for v in values) and name != "threshold":
        fail(f"a tree's {name} holds NaN")
    return values


def _check_tree(block: str, number: int, width: int, fail):
    lines = block.splitlines()
    if lines[0] != f"Tree={number}":
        fail(f"tree {number} is headed {lines[0][:20]!r}")
    fields = _pairs(lines[1:], fail)
    leaves = _bounded(fields.get("num_leaves"), 1, MAX_LEAVES, "num_leaves", fail)
    if fields.get("num_cat", "0") != "0" or fields.get("is_linear", "0") != "0":
        fail("a tree has categorical or linear splits, which fit-head never makes")
    allowed = {"num_leaves", "num_cat", "is_linear", "shrinkage", *NODE_KEYS, *LEAF_KEYS}
    if set(fields) - allowed:
        fail(f"a tree has unexpected fields ({', '.join(sorted(set(fields) - allowed))})")
    _numbers(fields.get("leaf_value", ""), leaves, "leaf_value", fail, integer=False)
    if leaves == 1:
        return
    inner = leaves - 1
    get = {k: _numbers(fields.get(k, ""), inner, k, fail,
                       integer=k in ("split_feature", "decision_type", "left_child", "right_child"))
           for k in ("split_feature", "threshold", "decision_type", "left_child", "right_child")}
    if any(not 0 <= f < width for f in get["split_feature"]):
        fail(f"a tree splits on a feature outside the model's {width}")
    if any(not 0 <= d < 16 or d & 1 for d in get["decision_type"]):
        fail("a tree has a decision type fit-head never writes")
    reached_nodes, reached_leaves = [], []
    for node, children in enumerate(zip(get["left_child"], get["right_child"])):
        for child in children:
            if child >= 0:
                if not node < child < inner:
                    fail("a tree's child index points outside it or back up the tree")
                reached_nodes.append(child)
            elif not 0 <= ~child < leaves:
                fail("a tree's leaf index is outside the tree")
            else:
                reached_leaves.append(~child)
    if sorted(reached_nodes) != list(range(1, inner)) or sorted(reached_leaves) != list(range(leaves)):
        fail("a tree's nodes and leaves are not each reached exactly once")
