"""Random damage to the files of a head folder or a cache, for the fuzz test: each mutation
is seeded, so a failing case is reproduced by its number."""
from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

ODD_VALUES = [None, -1, 0, 1, 2**31, 10**12, -(10**12), 1e308, float("nan"), True, "", "x",
              "../ids", "/etc/passwd", [], {}, [0] * 5, {"a": 1}]


def mutate_json_value(value, rng: random.Random):
    """The same JSON with one value (at a random path) replaced by an odd one."""
    paths = list(_paths(value, ()))
    if not paths:
        return rng.choice(ODD_VALUES)
    path = rng.choice(paths)
    new = rng.choice(ODD_VALUES)
    if not path:
        return new
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


def _paths(value, prefix):
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:50]):
            yield (*prefix, i)
            yield from _paths(item, (*prefix, i))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Flip, cut, insert or overwrite bytes."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(16))
    kind = rng.choice(["flip", "cut", "insert", "overwrite"])
    at = rng.randrange(len(data))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "cut":
        return data[:at]
    if kind == "insert":
        return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[at:]
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[at + 64:]


def mutate_lightgbm_text(text: str, rng: random.Random) -> str:
    """One number of a random line of the model replaced by an odd one (or the line cut)."""
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if "=" in line]
    at = rng.choice(candidates)
    key, _, values = lines[at].partition("=")
    items = values.split(" ")
    if rng.random() < 0.2:
        items = items[: rng.randrange(len(items) + 1)]
    else:
        items[rng.randrange(len(items))] = str(rng.choice(
            [-1, 0, 1, 10**6, 2**31 - 1, -(2**31), 2**40, "nan", "inf", "x", "", -7, 3]))
    lines[at] = f"{key}={' '.join(items)}"
    return "\n".join(lines)


def mutate_zip(data: bytes, rng: random.Random) -> bytes:
    """A skops file (a zip): one member's JSON value or bytes changed."""
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        members = {name: src.read(name) for name in src.namelist()}
    name = rng.choice(sorted(members))
    content = members[name]
    if name.endswith(".json"):
        try:
            members[name] = json.dumps(mutate_json_value(json.loads(content), rng)).encode()
        except ValueError:
            members[name] = mutate_bytes(content, rng)
    elif name.endswith(".npy") and len(content) > 128 and rng.random() < 0.7:
        members[name] = content[:128] + mutate_bytes(content[128:], rng)  # the values, header kept
    else:
        members[name] = mutate_bytes(content, rng)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for key, value in members.items():
            dst.writestr(key, value)
    return out.getvalue()


def mutate_file(path: Path, rng: random.Random):
    """Damage one file in place, choosing the kind of damage from its format."""
    data = path.read_bytes()
    if path.suffix == ".json" and rng.random() < 0.8:
        try:
            path.write_text(json.dumps(mutate_json_value(json.loads(data), rng)))
            return
        except ValueError:
            pass
    if path.suffix == ".txt" and rng.random() < 0.8 and b"=" in data:
        path.write_text(mutate_lightgbm_text(data.decode("latin-1"), rng), encoding="latin-1")
    elif path.suffix == ".skops" and rng.random() < 0.8 and zipfile.is_zipfile(io.BytesIO(data)):
        path.write_bytes(mutate_zip(data, rng))
    else:
        path.write_bytes(mutate_bytes(data, rng))
