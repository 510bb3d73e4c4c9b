"""N-gram (prompt lookup) drafts for speculative decoding (`speculative = "ngram"`).

A draft is what followed the last occurrence of the sequence's newest n tokens earlier in
its prompt or output: text that is being repeated or edited continues as it went before.
The engine decodes the draft with the next token in one step and samples every position
with the request's own sampler, in order, keeping drafted tokens while each equals what was
sampled there. Every kept token is thus a sample of the model at its position, drawn by the
same sampler calls as without drafts: greedy output is identical, a seeded sampled output
too, and the distribution is unchanged.
"""

from __future__ import annotations

from array import array

NGRAM_SIZES = (3, 2)  # the longest match is tried first


class NgramDrafter:
    """The history of one sequence (prompt and output tokens) and drafts looked up in it."""

    def __init__(self, tokens: list[int], max_draft: int):
        self.max_draft = max_draft
        self._history = array("i", tokens)
        self._bytes = bytearray(self._history.tobytes())  # searched with C's find

    def extend(self, tokens) -> None:
        chunk = array("i", tokens)
        self._history.extend(chunk)
        self._bytes += chunk.tobytes()

    def draft(self) -> list[int]:
        """Up to max_draft tokens that followed the newest n-gram's last earlier occurrence."""
        history, data = self._history, self._bytes
        size = len(history)
        for n in NGRAM_SIZES:
            if size <= n:
                continue
            pattern = bytes(data[-4 * n:])
            end = len(data) - 4  # the match must end before the newest token
            while True:
                at = data.rfind(pattern, 0, end)
                if at < 0:
                    break
                if at % 4 == 0:
                    start = at // 4 + n
                    return history[start:start + self.max_draft].tolist()
                end = at + 4 * n - 1  # a match across token boundaries: look further back
        return []
