"""finetune --cache: the frozen blocks' output read from an embed cache instead of recomputed.

With `--unfreeze N` on a model of L blocks, blocks 1..L-N are frozen: they give the same
states every epoch. `embed --per-position --layer L-N` writes exactly those states (hidden
state L-N is the residual stream after block L-N, what block L-N+1 reads), so a fine-tuning
run can start every forward at its first trainable block. The cache must have been made by
the same model and weights, at that layer, with the same tokenisation and whole windows
(every token of every row); `match_problems` names each difference, and the run is refused
before it writes anything.

The states are held in memory (on the GPU when they fit in half its free memory), and
gathered per batch into a right-padded (B, W, d) float32 tensor: padding is zero, and the
model is causal, so it never reaches a real position. A cache too large for memory is read
from disk per batch, a background thread reading ahead of the one being trained; its epochs
then go chunk by chunk (`heads.seqdata.chunk_ordered_batches`), and decoded chunks are kept
while the rows of their pool are trained, so each is read once an epoch.

With --rc-augment a training row is reverse-complemented on a coin; `embed --rc
--per-position` stores the reverse strand's states beside the forward ones
(positions/rc_values, same starts and lengths), and each row's states come from the strand
its coin chose, so the run stays the end-to-end one.
"""
from __future__ import annotations

import os
import shlex
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from cache.store import POSITION_CHUNK, STRAND_VALUES, Cache, CacheError
from .errors import FinetuneError

MEMORY_SHARE = 0.5  # of the memory available now, at most, for states held in memory
CHUNK_MEMORY = 1 << 30  # decoded chunks kept at most, in bytes, when states are read from disk


def needed_layer(unfreeze: str, n_layer: int) -> int:
    """The hidden state the first trainable block reads: the number of frozen blocks
    (`FinetuneOptions.validate` has refused --unfreeze all with --cache)."""
    return n_layer - int(unfreeze)


def embed_command(loaded, input_hint: str, layer: int, options) -> str:
    """The embed command that writes the states this run needs."""
    parts = ["python", "cli.py", "embed", "--model", loaded.name, "--input", input_hint,
             "--per-position", "--layer", str(layer)]
    if options.rc_augment:
        parts.append("--rc")
    if options.special_tokens != "sep":
        parts += ["--special-tokens", options.special_tokens]
    if options.truncation != "keep-end":
        parts += ["--on-long", options.truncation]
    if options.packs:
        parts += ["--packs", str(options.packs)]
    return shlex.join(parts) + " --out STATES.zarr"


def match_problems(cache: Cache, loaded, tokenizer, layer: int, options, pairs: bool) -> list[str]:
    """Every way the cache differs from what this run needs, in words (empty: it matches)."""
    s, attrs = cache.settings, cache.attrs
    found = []
    if not s.get("per_position"):
        found.append("it holds no per-position states (embed with --per-position)")
    checks = [("model", attrs.get("model", s.get("model")), loaded.name),
              ("weights", s.get("weights_sha256"), loaded.weights_sha256),
              ("modulation shift", s.get("modulation_shift"), loaded.config.modulation_shift),
              ("layer", s.get("layer"), layer),
              ("tokenisation", s.get("tokenizer"), tokenizer.describe())]
    if not pairs:
        checks.append(("packs", s.get("packs"), options.packs))
    for name, theirs, ours in checks:
        if theirs != ours:
            found.append(f"{name} {_short(theirs)} (this run needs {_short(ours)})")
    if s.get("window") or s.get("center_window"):
        found.append("its per-position windows cover part of each row (this run needs every "
                     "token: embed without --position-window/--center-window)")
    if options.rc_augment and s.get("rc") is not True:
        found.append("it holds the forward strand only (--rc-augment needs both: embed with --rc)")
    if s.get("dtype") not in ("float16", "float32"):
        found.append(f"storage dtype {s.get('dtype')!r} (float16 or float32)")
    if pairs != cache.has_pairs:
        found.append("it holds variant pairs" if cache.has_pairs else
                     "it holds single sequences, and this run trains on variant pairs")
    return found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PrefixStates:
    """The cached states of the rows a run trains on, gathered per batch on its device."""

    def __init__(self, cache: Cache, rows: np.ndarray, device: torch.device, say=print,
                 strands: int = 1):
        self.cache, self.device = cache, device
        self.rows = rows  # cache row of each of the run's units (any shape; gathered flat)
        # positions/values, and with --rc-augment positions/rc_values (reverse strand)
        self.arrays = list(STRAND_VALUES[:strands])
        starts = cache._get("positions/start").astype(np.int64)
        lengths = cache._get("positions/length").astype(np.int64)
        firsts = cache._get("positions/first_token").astype(np.int64)
        total = int(cache.group["positions/values"].shape[0])
        self.d = int(cache.group["positions/values"].shape[1])
        shapes = {name: tuple(cache.group[f"positions/{name}"].shape) for name in self.arrays}
        if len(set(shapes.values())) > 1:  # both strands are read at the same starts
            raise CacheError(f"{cache.path}: positions/values and positions/rc_values differ in "
                             f"shape ({shapes}); rerun the embed command that made it")
        if (starts < 0).any() or (lengths < 0).any() or (starts + lengths > total).any():
            raise CacheError(f"{cache.path}: positions/start and positions/length point outside "
                             "positions/values; rerun the embed command that made it")
        if (firsts != 0).any():
            raise FinetuneError(f"{cache.path} stores a window of each row (first token > 0); "
                                "this run needs every token: embed without a window")
        self.starts, self.lengths, self.total = starts, lengths, total
        # in memory, the strands one after the other: a reverse-strand row starts `total` later
        self.values = self._in_memory(total, np.dtype(cache.settings["dtype"]), say)
        self._reader = ThreadPoolExecutor(max_workers=1) if self.from_disk else None
        self._ahead: dict[tuple, Future] = {}
        # disk mode: decoded chunks by (strand, chunk), least recently used first (the reader
        # thread and the training loop both read, hence the lock); enough for a pool of 32 batches
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._chunks_lock = threading.Lock()
        chunk_bytes = POSITION_CHUNK * self.d * np.dtype(cache.settings["dtype"]).itemsize
        self.chunk_capacity = max(4, min(CHUNK_MEMORY, available_memory() // 4) // max(1, chunk_bytes))
        self.chunks_read = 0

    @property
    def first_chunks(self) -> np.ndarray:
        """The storage chunk of positions/values each of the run's units starts in (pairs: the
        reference's; alternatives are written in the same order)."""
        return self.starts[self.rows.reshape(len(self.rows), -1)[:, 0]] // POSITION_CHUNK

    @property
    def chunks_per_group(self) -> int:
        """Consecutive chunks read as one group (an epoch's pools, a scoring block): two groups
        and the chunk after them, of each strand, stay among the kept ones."""
        return max(1, self.chunk_capacity // (2 * len(self.arrays)) - 1)

    def scoring_blocks(self, units: np.ndarray) -> list[np.ndarray]:
        """Positions of `units` in blocks to score one after the other: one block, or from disk,
        in storage-chunk order, each block within `chunks_per_group` chunks (batches sorted by
        length within a block then decode each chunk about once a pass)."""
        if not self.chunk_ordered:
            return [np.arange(len(units))]
        from .seqdata import chunk_groups

        chunks = self.first_chunks[units]
        order = np.argsort(chunks, kind="stable")
        return [order[g] for g in chunk_groups(chunks[order], 1 << 62, self.chunks_per_group)]

    @property
    def chunk_ordered(self) -> bool:
        """Epochs go chunk by chunk: only when the states are read from disk (in memory, the
        order costs nothing and the batches stay those of an end-to-end run)."""
        return self.from_disk

    def _in_memory(self, total: int, dtype, say):
        """All states as one tensor (GPU, else host memory) when they fit; else None (disk)."""
        size = len(self.arrays) * total * self.d * dtype.itemsize
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if size <= MEMORY_SHARE * free:
                say(f"prefix states: {size / 2**30:.2f} GiB held in GPU memory")
                return torch.from_numpy(self._read_all()).to(self.device)
        if size <= MEMORY_SHARE * available_memory():
            say(f"prefix states: {size / 2**30:.2f} GiB held in memory")
            return torch.from_numpy(self._read_all())
        say(f"prefix states: {size / 2**30:.2f} GiB do not fit in memory; read from "
            f"{self.cache.path} per batch, ahead of training")
        return None

    def _read_all(self) -> np.ndarray:
        if len(self.arrays) == 1:
            return np.ascontiguousarray(self.cache._get(f"positions/{self.arrays[0]}"))
        out = np.empty((len(self.arrays) * self.total, self.d), self.cache.settings["dtype"])
        for k, name in enumerate(self.arrays):  # one strand at a time: no second full copy
            out[k * self.total: (k + 1) * self.total] = self.cache._get(f"positions/{name}")
        return out

    def check_lengths(self, expected: np.ndarray, what: str):
        """Every unit's cached row holds as many states as the run's tokens of it."""
        have = self.lengths[self.rows]
        bad = np.argwhere(have != expected)
        if len(bad):
            i = tuple(bad[0])
            raise FinetuneError(f"{self.cache.path}: {len(bad)} {what} hold a different number of "
                                f"states than this run's tokens (first: {int(have[i])} vs "
                                f"{int(expected[i])}); was it made from this input with these "
                                "--special-tokens/--on-long/--packs?")

    def units(self, batch: np.ndarray) -> np.ndarray:
        """The cache rows of a batch of the run's units, in forward order: for pairs all the
        reference windows, then all the alternative ones."""
        return self.rows[batch].T.reshape(-1)

    @property
    def from_disk(self) -> bool:
        return self.values is None

    def gather(self, units: np.ndarray, width: int, strands: np.ndarray | None = None) -> torch.Tensor:
        """(len(units), width, d) float32 states of these cache rows, zero past each length;
        `strands`: 1 where a unit's reverse complement is wanted (--rc-augment), else 0."""
        strands = self._strands(units, strands)
        if self.from_disk:
            future = self._ahead.pop(self._key(units, width, strands), None)
            return future.result() if future is not None else self._from_disk(units, width, strands)
        starts = torch.as_tensor(self.starts[units] + strands * self.total, device=self.values.device)
        lengths = torch.as_tensor(self.lengths[units], device=self.values.device)
        offsets = torch.arange(width, device=self.values.device)
        real = offsets[None, :] < lengths[:, None]
        index = torch.where(real, starts[:, None] + offsets[None, :], 0)
        out = self.values[index].float()
        out[~real] = 0
        return out.to(self.device)

    def read_ahead(self, units: np.ndarray, width: int, strands: np.ndarray | None = None):
        """Start reading a batch that will be asked for soon (disk mode only)."""
        strands = self._strands(units, strands)
        key = self._key(units, width, strands)
        if self.from_disk and key not in self._ahead:
            self._ahead[key] = self._reader.submit(self._from_disk, units, width, strands)

    def _strands(self, units: np.ndarray, strands: np.ndarray | None) -> np.ndarray:
        if strands is None:
            return np.zeros(len(units), np.int64)
        strands = np.asarray(strands, dtype=np.int64)
        if strands.any() and len(self.arrays) < 2:
            raise FinetuneError("reverse-strand states were asked for, and only the forward "
                                "strand's were read (a PrefixStates opened without --rc-augment)")
        return strands

    @staticmethod
    def _key(units: np.ndarray, width: int, strands: np.ndarray) -> tuple:
        return tuple(units.tolist()), width, tuple(strands.tolist())

    def _from_disk(self, units: np.ndarray, width: int, strands: np.ndarray) -> torch.Tensor:
        out = np.zeros((len(units), width, self.d), np.float32)
        for k, row in enumerate(units):
            start, n = int(self.starts[row]), int(self.lengths[row])
            done = 0
            while done < n:  # a row may span chunks
                chunk, offset = divmod(start + done, POSITION_CHUNK)
                values = self._chunk(int(strands[k]), chunk)
                take = min(n - done, len(values) - offset)
                out[k, done: done + take] = values[offset: offset + take]
                done += take
        return torch.from_numpy(out).to(self.device)

    def _chunk(self, strand: int, chunk: int) -> np.ndarray:
        """One decoded, checked chunk of a strand's positions/ array, from the kept ones when
        it is there."""
        key = (strand, chunk)
        with self._chunks_lock:
            values = self._chunks.get(key)
            if values is not None:
                self._chunks.move_to_end(key)
                return values
        first = chunk * POSITION_CHUNK
        values = self.cache.position_values(first, min(POSITION_CHUNK, self.total - first),
                                            self.arrays[strand])
        with self._chunks_lock:
            self.chunks_read += 1
            self._chunks[key] = values
            while len(self._chunks) > self.chunk_capacity:
                self._chunks.popitem(last=False)
        return values

    def close(self):
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)


def available_memory() -> int:
    """Bytes of memory available now (Linux); a conservative 4 GiB where it cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def open_prefix(path: str, loaded, tokenizer, options, rows, device, say) -> PrefixStates:
    """The run's PrefixStates, or a FinetuneError naming every way the cache does not fit.
    `rows` is the run's SequenceSet or PairSet."""
    pairs = hasattr(rows, "ref_tokens")
    layer = needed_layer(options.unfreeze, loaded.config.n_layer)
    try:
        cache = Cache.open(path)
        cache.require_complete()
    except CacheError as exc:
        raise FinetuneError(f"--cache: {exc}") from None
    found = match_problems(cache, loaded, tokenizer, layer, options, pairs)
    if found:
        raise FinetuneError(f"--cache {path} does not fit this run: " + "; ".join(found)
                            + ". Write one that does with: "
                            + embed_command(loaded, "INPUT", layer, options))
    cache_index = {str(i): k for k, i in enumerate(cache.ids)}
    wanted = ([f"{i}/ref" for i in rows.data.ids], [f"{i}/alt" for i in rows.data.ids]) if pairs \
        else ([str(i) for i in rows.data.ids],)
    missing = [i for part in wanted for i in part if i not in cache_index]
    if missing:
        raise FinetuneError(f"--cache {path} lacks {len(missing)} of this run's rows (e.g. "
                            f"{', '.join(map(repr, missing[:3]))}); embed the same input")
    index = np.array([[cache_index[i] for i in part] for part in wanted], dtype=np.int64).T
    states = PrefixStates(cache, index, device, say, strands=2 if options.rc_augment else 1)
    if pairs:
        expected = np.stack([[len(t) for t in rows.ref_tokens], [len(t) for t in rows.alt_tokens]], axis=1)
        texts = [(tokenizer.truncate_text(r), tokenizer.truncate_text(a)) for r, a in rows.texts]
    else:
        expected = np.asarray(rows.lengths)[:, None]
        texts = [(tokenizer.truncate_text("|".join(parts)),) for parts in rows.parts]
    states.check_lengths(expected, "pairs" if pairs else "rows")
    _check_texts(cache, index, texts, path)
    return states


def identity(states: PrefixStates) -> dict:
    """What a resumed run must find again: not the path (a moved cache is the same), but
    what it holds."""
    s = states.cache.settings
    return {"layer": s["layer"], "dtype": s["dtype"], "input_sha256": s["input_sha256"],
            "precision": s.get("precision")}


def _check_texts(cache: Cache, index: np.ndarray, texts: list[tuple], path: str):
    """The cache's stored text of each row equals this run's (when both are known)."""
    if not texts or "sequences" not in cache.group:
        return
    stored = cache.sequences()
    differ = [(k, j) for k, row in enumerate(texts) for j, text in enumerate(row)
              if str(stored[index[k, j]]) != text]
    if differ:
        k, j = differ[0]
        raise FinetuneError(f"--cache {path}: {len(differ)} rows hold other sequences than this "
                            f"run's input (first: row {cache.ids[index[k, j]]!r}); embed the same "
                            "input")
