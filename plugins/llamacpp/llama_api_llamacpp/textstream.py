"""Turn token bytes into streamable text: whole UTF-8 characters only, stop strings held back."""

from __future__ import annotations

import codecs

from llama_api.text.stops import StopHoldback


class TextStream:
    """Feed token bytes; get back text that is safe to send now.

    - A multi-byte character split across tokens is sent once it is complete.
    - Text that could be the start of a stop string is held until it can't be.
    - When a stop string appears, `stopped` becomes True and the text before it is the last
      text returned; nothing of the stop string is ever returned.
    """

    def __init__(self, stop: list[str] | None = None, drop_invalid: bool = False):
        # `drop_invalid`: bytes that are not UTF-8 vanish instead of becoming U+FFFD, as
        # llama.cpp's grammar engine skips them (so a constrained output is what it checked).
        self._decoder = codecs.getincrementaldecoder("utf-8")(
            errors="ignore" if drop_invalid else "replace")
        self._stops = StopHoldback(stop)
        self.text = ""  # everything returned so far

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the text, once `stopped`."""
        return self._stops.matched if self._stops.stopped else None

    def _emit(self, text: str) -> str:
        self.text += text
        return text

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        piece = self._decoder.decode(data)
        return self._emit(self._stops.feed(piece)) if piece else ""

    def finish(self) -> str:
        """The rest, at the end of generation (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        out = self._stops.feed(self._decoder.decode(b"", final=True))
        return self._emit(out + self._stops.flush())
