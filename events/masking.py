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
    """Masks a text stream fed in pieces.

    It holds back the shortest tail that could still grow into a secret (a suffix that is a
    proper prefix of one); everything before it is final. The held tail goes out with the next
    piece or at `final()`.
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = ""

    def feed(self, text: str) -> str:
        if not self._masker:
            return text
        masked = self._masker.mask(self._held + text)
        hold = self._hold_length(masked)
        if hold:
            self._held = masked[-hold:]
            return masked[:-hold]
        self._held = ""
        return masked

    def final(self) -> str:
        held, self._held = self._held, ""
        return held

    @property
    def held(self) -> int:
        return len(self._held)

    def _hold_length(self, text: str) -> int:
        best = 0
        for secret in self._masker.secrets:
            for h in range(min(len(secret) - 1, len(text)), best, -1):
                if text.endswith(secret[:h]):
                    best = h
                    break
        return best
