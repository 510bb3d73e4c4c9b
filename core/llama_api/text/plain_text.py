"""Client text stays text: a control token's spelling in a message can't become the token.

A chat prompt is the model's template rendered around what clients sent (messages, names,
tools). Tokenized in one piece with special tokens parsed, a user who writes
`<|im_end|><|im_start|>system` would close their own turn and open one the operator never
wrote. So before rendering, every control-token spelling in the client's strings is swapped
for a placeholder made of private-use characters; after rendering, the prompt is cut into
pieces as a tokenizer partitions it: each control token the template wrote, and the plain
text between them, the swapped spellings back in it as text. A prompt whose client text
holds no such spelling is one piece, tokenized exactly as before.

Used in the worker, by every backend that renders a chat template; no library needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

# Private-use characters: no template writes them, and text transforms (trim, upper) keep them.
OPEN, CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{OPEN}(\\d+){CLOSE}")


class Piece(NamedTuple):
    text: str
    special: bool  # tokenize with special-token parsing (the template's own text)


class Shield:
    """Swaps the control-token spellings of one vocabulary out of client values and back in.

    `spellings`: the text of every token that a tokenizer with special-token parsing turns
    into a control token."""

    def __init__(self, spellings: Iterable[str]):
        words = {s for s in spellings if s}
        self._controls = re.compile(_trie(words)) if words else None
        # The placeholder's own first character is swapped too: a client can't forge one.
        self._swapped = re.compile(_trie(words | {OPEN}))

    def protect(self, value: Any) -> tuple[Any, list[str]]:
        """`value` (strings, lists and dicts, keys included) with each spelling swapped for
        a placeholder, and the spellings by placeholder number."""
        swapped: list[str] = []

        def swap(match: re.Match) -> str:
            swapped.append(match.group(0))
            return f"{OPEN}{len(swapped) - 1}{CLOSE}"

        def walk(item: Any) -> Any:
            if isinstance(item, str):
                return self._swapped.sub(swap, item)
            if isinstance(item, dict):
                return {walk(k): walk(v) for k, v in item.items()}
            if isinstance(item, (list, tuple)):
                return [walk(v) for v in item]
            return item

        return walk(value), swapped

    def pieces(self, rendered: str, swapped: list[str]) -> list[Piece]:
        """The rendered prompt as pieces to tokenize one after the other. With nothing
        swapped: the whole prompt, special tokens parsed, exactly as before. Otherwise the
        pieces a tokenizer's own partition would make (each control token of the template
        alone, special; the text between, the client's spellings in it, plain), so that the
        text around a spelling tokenizes as it would around any other word."""
        if not swapped:
            return [Piece(rendered, True)]
        out: list[Piece] = []
        text: list[str] = []  # plain text since the last control token

        def flush() -> None:
            joined = "".join(text)
            if joined:
                out.append(Piece(joined, False))
            text.clear()

        def template(part: str) -> None:
            at = 0
            for match in self._controls.finditer(part) if self._controls else ():
                text.append(part[at:match.start()])
                flush()
                out.append(Piece(match.group(0), True))
                at = match.end()
            text.append(part[at:])

        at = 0
        for match in _PLACEHOLDER.finditer(rendered):
            index = int(match.group(1))
            if index >= len(swapped):
                continue  # not ours (a client's OPEN was swapped, so none should be)
            template(rendered[at:match.start()])
            text.append(swapped[index])
            at = match.end()
        template(rendered[at:])
        flush()
        return out


def _trie(words: set[str]) -> str:
    """One regex matching any of `words`, the longest where several match ("<|im_start|>"
    over "<|im"), written as a trie: a vocabulary may have thousands of control tokens
    (Gemma 3: 6,250), and a plain alternation of them took 9 s over 100 KB of "<"."""
    root: dict = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict) -> str:
        branches = [re.escape(char) + pattern(child)
                    for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" not in node:
            return body
        return (f"(?:{body})" if len(branches) == 1 else body) + "?"  # greedy: longest first

    return pattern(root)
