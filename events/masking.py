"""Replace secret values by `***`: in text, in a stream where a value arrives split across
reads (`StreamMasker`), and across stdout and stderr where a value is split between them in the
order the process wrote them (`CrossStreamMasker`)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        pattern = "|".join(re.escape(s) for s in self.secrets)
        self._re = re.compile(pattern) if self.secrets else None

    @classmethod
    def from_env(cls, env: Mapping[str, str], names: Iterable[str]) -> Masker:
        return cls(env.get(n, "") for n in names)

    def __bool__(self) -> bool:
        return self._re is not None

    def mask(self, text: str) -> str:
        return text if self._re is None else self._re.sub(MASK, text)

    def stream(self) -> StreamMasker:
        return StreamMasker(self)

    def mask_value(self, value: Any) -> Any:
        """Every string inside `value` (str, or lists, tuples and dicts of them) masked."""
        if self._re is None:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, dict):
            return {k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask_value(v) for v in value)
        return value

    def undecided(self, raw: str) -> list[int]:
        """Positions, ascending, from which `raw` is a proper prefix of some secret: text that
        comes later could complete a secret there."""
        n = len(raw)
        longest = len(self.secrets[0]) if self.secrets else 0
        firsts = {s[0] for s in self.secrets}
        found: list[int] = []
        for i in range(max(0, n - longest + 1), n):
            if raw[i] in firsts:
                rest = raw[i:]
                if any(len(s) > len(rest) and s.startswith(rest) for s in self.secrets):
                    found.append(i)
        return found


class StreamMasker:
    """Masks a text stream fed in pieces, with exactly the result of masking it in one piece.

    Masking scans left to right and, at each position, replaces the longest secret that starts
    there. A position is undecided while the text from it to the end is a proper prefix of some
    secret: more text could complete that secret, or a longer one than what matches now (with
    secrets `ab` and `abcd`, masking `ab` early would leak `cd`). The stream masker emits the
    masked text up to the first undecided position the scan reaches and holds the rest back,
    unmasked, until the next piece or `final()`. The held tail is shorter than the longest
    secret, and is empty whenever the text does not end in the beginning of a secret.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = ""

    def feed(self, text: str) -> str:
        regex = self._masker._re
        if regex is None:
            return text
        raw = self._held + text
        undecided = self._undecided(raw)
        out: list[str] = []
        pos = 0
        cut = len(raw)
        for m in regex.finditer(raw):
            nxt = next((u for u in undecided if u >= pos), None)
            if nxt is not None and m.start() >= nxt:
                break
            out += [raw[pos : m.start()], MASK]
            pos = m.end()
        nxt = next((u for u in undecided if u >= pos), None)
        if nxt is not None:
            cut = nxt
        out.append(raw[pos:cut])
        self._held = raw[cut:]
        return "".join(out)

    def final(self) -> str:
        held, self._held = self._held, ""
        return self._masker.mask(held)

    @property
    def held(self) -> int:
        return len(self._held)

    def _undecided(self, raw: str) -> list[int]:
        return self._masker.undecided(raw)


Piece = tuple[str, str]  # (stream, text)


class CrossStreamMasker:
    """Masks secrets whose characters came from both streams, in the order they were written
    (`printf abc; printf 123 >&2` with the secret `abc123`), before each stream's own masking.

    It sees the text of stdout and stderr in write order. A secret that spans a change of
    stream is replaced by `***` in the stream where it began; a secret within one stream is
    left to that stream's StreamMasker. As there, text from which more text could complete a
    secret is held (at most the longest secret, less one character) until the next piece or
    `final()`; the held text is the end of what was written, so holding never reorders.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held: list[Piece] = []

    def feed(self, stream: str, text: str) -> list[Piece]:
        if not text:
            return []
        pieces = [*self._held, (stream, text)]
        out, self._held = self._emit(pieces, final=False)
        return out

    def final(self) -> list[Piece]:
        pieces, self._held = self._held, []
        return self._emit(pieces, final=True)[0] if pieces else []

    def _emit(self, pieces: list[Piece], *, final: bool) -> tuple[list[Piece], list[Piece]]:
        """(what is decided, what to hold): cross-stream secrets masked, the rest as is."""
        raw = "".join(t for _, t in pieces)
        starts: list[int] = []
        pos = 0
        for _, t in pieces:
            starts.append(pos)
            pos += len(t)
        switches = [starts[k] for k in range(1, len(pieces)) if pieces[k][0] != pieces[k - 1][0]]
        undecided = [] if final else self._masker.undecided(raw)
        cut = undecided[0] if undecided else len(raw)
        out: list[Piece] = []
        pos = 0
        while (match := self._first_match(raw, switches, pos, cut)) is not None:
            start, end = match
            _add(out, _slice(pieces, starts, pos, start))
            _add(out, [(pieces[bisect.bisect_right(starts, start) - 1][0], MASK)])
            pos = end
            if pos > cut:  # the secret ran past the first undecided position
                cut = next((u for u in undecided if u >= pos), len(raw))
        _add(out, _slice(pieces, starts, pos, cut))
        return out, _slice(pieces, starts, cut, len(raw))

    def _first_match(
        self, raw: str, switches: list[int], lo: int, hi: int
    ) -> tuple[int, int] | None:
        """The leftmost, then longest, secret starting in [lo, hi) that crosses a change of
        stream. Windows are scanned by switch, in order: a secret starting before an earlier
        switch and crossing a later one crosses the earlier one too, so the first found is
        the leftmost."""
        secrets = self._masker.secrets
        longest = len(secrets[0])
        for p in switches:
            for i in range(max(lo, p - longest + 1), min(p, hi)):
                for s in secrets:  # longest first
                    if i + len(s) > p and raw.startswith(s, i):
                        return i, i + len(s)
        return None


def _slice(pieces: list[Piece], starts: list[int], a: int, b: int) -> list[Piece]:
    """The pieces' text between positions a and b of their concatenation."""
    out: list[Piece] = []
    for (stream, t), start in zip(pieces, starts, strict=True):
        lo, hi = max(a, start), min(b, start + len(t))
        if lo < hi:
            out.append((stream, t[lo - start : hi - start]))
    return out


def _add(out: list[Piece], pieces: list[Piece]) -> None:
    for stream, t in pieces:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + t)
        else:
            out.append((stream, t))
