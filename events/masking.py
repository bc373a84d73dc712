"""Replace secret values by `***`, also in a stream where a value arrives split across reads."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

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
        self._firsts = frozenset(s[0] for s in masker.secrets)
        self._longest = len(masker.secrets[0]) if masker.secrets else 0

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
        """Positions, ascending, from which `raw` is a proper prefix of some secret."""
        n = len(raw)
        found: list[int] = []
        for i in range(max(0, n - self._longest + 1), n):
            if raw[i] in self._firsts:
                rest = raw[i:]
                if any(len(s) > len(rest) and s.startswith(rest) for s in self._masker.secrets):
                    found.append(i)
        return found
