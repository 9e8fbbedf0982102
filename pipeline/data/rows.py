"""Rows of memory-mapped image arrays chosen by index, without copying: a training subset, a fold, a refit's
train + valid."""

from __future__ import annotations

import numpy as np


class Rows:
    """Rows of uint8 N×H×W×C arrays (memory maps, typically) chosen by index arrays, without copying them: parts
    [(array, row indices)] laid end to end. `take` makes a sub-view; indexing with a slice or an index array
    gathers those rows into a new array; `concat` lays views end to end (a refit's train + valid)."""

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]):
        self.parts = [(x, np.asarray(idx, np.int64)) for x, idx in parts]
        self.ends = np.cumsum([len(i) for _, i in self.parts], dtype=np.int64)
        first = self.parts[0][0]
        self.shape, self.dtype = (int(self.ends[-1]) if len(self.ends) else 0, *first.shape[1:]), first.dtype

    @classmethod
    def of(cls, x) -> Rows:
        """An array (or Rows) as Rows of all its rows."""
        return x if isinstance(x, Rows) else cls([(x, np.arange(len(x)))])

    @classmethod
    def concat(cls, *views) -> Rows:
        """Views laid end to end."""
        return cls([p for v in views for p in cls.of(v).parts])

    def __len__(self) -> int:
        return self.shape[0]

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, source row) of each of ids."""
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        part = np.searchsorted(self.ends, ids, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        src = np.empty(len(ids), np.int64)
        for p, (_, idx) in enumerate(self.parts):
            m = part == p
            src[m] = idx[ids[m] - starts[p]]
        return part, src

    def take(self, ids) -> Rows:
        """The view of rows ids (in that order)."""
        ids = np.asarray(ids, np.int64)
        part, src = self._locate(ids)
        cuts = np.flatnonzero(np.diff(part)) + 1  # runs of one part keep their order
        runs = zip(np.split(part, cuts), np.split(src, cuts))
        return Rows([(self.parts[p[0]][0], s) for p, s in runs if len(p)] or [(self.parts[0][0], src)])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):  # one row, as an array's x[i] gives it
            return self[np.array([key], np.int64)][0]
        ids = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        part, src = self._locate(ids)
        out = np.empty((len(ids), *self.shape[1:]), self.dtype)
        for p, (x, _) in enumerate(self.parts):
            m = part == p
            if m.all():
                return np.asarray(x[src])
            if m.any():
                out[m] = x[src[m]]
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)
