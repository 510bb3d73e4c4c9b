"""Turn token bytes into streamable text: whole UTF-8 characters only, stop strings held back."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed token bytes; get back text that is safe to send now.

    - A multi-byte character split across tokens is sent once it is complete.
    - Text that could be the start of a stop string is held until it can't be.
    - When a stop string appears, `stopped` becomes True and the text before it is the last
      text returned; nothing of the stop string is ever returned.
    """

    def __init__(self, stop: list[str] | None = None):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = [s for s in (stop or []) if s]
        self._held = ""
        self.stopped = False
        self.text = ""  # everything returned so far

    def _release(self, final: bool) -> str:
        held = self._held
        if not self.stop:
            self._held = ""
            return held
        first = -1
        for s in self.stop:
            i = held.find(s)
            if i != -1 and (first == -1 or i < first):
                first = i
        if first != -1:
            self.stopped = True
            self._held = ""
            return held[:first]
        if final:
            self._held = ""
            return held
        # Keep the longest tail of `held` that is a prefix of some stop string.
        keep = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(held)), keep, -1):
                if held.endswith(s[:n]):
                    keep = n
                    break
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep] if keep else held

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        piece = self._decoder.decode(data)
        if not piece:
            return ""
        self._held += piece
        out = self._release(final=False)
        self.text += out
        return out

    def finish(self) -> str:
        """The rest, at the end of generation (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        out = self._release(final=True)
        self.text += out
        return out
