"""Stop strings on streamed text: never emit any part of a stop string.

A helper for backends whose library does not match stop strings itself.
"""

from __future__ import annotations


class StopHoldback:
    """Feed text pieces; get back what is safe to emit now.

    Text that could be the start of a stop string is held until the next pieces decide it.
    Once a stop string appears, `feed` returns the text before it and `stopped` turns True.
    """

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in dict.fromkeys(stops or []) if s]
        self.held = ""
        self.stopped = False
        self.matched: str | None = None
        self.rest = ""  # what followed the stop string in the text fed so far

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self.held + text
        # The stop string that completes first, as if the text came one character at a
        # time (so the cut can't change which of two overlapping stops wins); of two that
        # end together, the longer.
        first, first_end = -1, -1
        for stop in self.stops:
            index = buffer.find(stop)
            end = index + len(stop)
            if index != -1 and (first == -1 or end < first_end
                                or (end == first_end and index < first)):
                first, first_end, self.matched = index, end, stop
        if first != -1:
            self.stopped = True
            self.held = ""
            self.rest = buffer[first + len(self.matched):]
            return buffer[:first]
        keep = self._partial_suffix(buffer)
        self.held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest end of buffer that is a proper start of some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def flush(self) -> str:
        """The held text, at the end of generation (it never became a stop string)."""
        text, self.held = ("" if self.stopped else self.held), ""
        return text
