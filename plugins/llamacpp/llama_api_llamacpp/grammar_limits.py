"""Bounds on the grammar work one request may ask for, checked before llama.cpp sees it.

llama.cpp parses a grammar recursively and expands each repetition into rules. Unchecked, a
200-byte request made it recurse out of its stack (a segfault: the worker and every request
on it gone) or build a grammar until the machine ran out of memory. Measured with
llama-cpp-python 0.3.36 (SmolLM2's vocabulary, `llama_sampler_init_grammar`, one process
per case; /tmp scripts, numbers in the README of this plugin):

- Repetition `x{m,n}`: llama.cpp refuses m > 2000 and silently reads n > 2000 as unbounded
  (its MAX_REPETITION_THRESHOLD); `[a-z]{0,2000}` compiles in under 1 ms. So every bound a
  schema or grammar gives (minLength, maxLength, minItems, maxItems, `{m,n}`) is at most
  2000 and is written in llama.cpp's `{m,n}` syntax, whose size and depth don't grow with
  the bound (llama-cpp-python's converter nests n parentheses: 30,000 overflowed the stack).
- Parentheses: 10,000 deep parse on the main thread's 8 MiB stack, 30,000 overflow it, and
  3,000 overflow a 1 MiB thread stack. No sensible grammar nests more than a few dozen.
- Size: a 1 MiB grammar of 60,000 rules compiles in 0.36 s.
- Alternatives (enum, anyOf): each is a parse stack the sampler checks every candidate token
  against, on every step: 20,000 alternatives cost SmolLM2 ~0.3 s a token here. A repeated
  part that can match nothing, `("x"{0,n}){0,n}`, keeps n x n of them: n = 1000 had not given
  5 tokens after 5 minutes. So grammars count their open parses and refuse such repetitions.
"""

from __future__ import annotations

import re

from llama_api import errors

MAX_REPEAT = 2000  # llama.cpp's own MAX_REPETITION_THRESHOLD
MAX_NESTING = 100  # parentheses, in a grammar
MAX_GRAMMAR_BYTES = 512 * 1024
MAX_ALTERNATIVES = 1000  # values of an enum; schemas of an anyOf/oneOf
# Properties of an object: llama-cpp-python's converter recurses once per optional property
# (1,000 overflowed Python's recursion limit); half that leaves room on any thread.
MAX_PROPERTIES = 500
MAX_SCHEMA_DEPTH = 64  # schemas inside schemas
MAX_SCHEMA_PARTS = 10_000  # schemas and enum values in one request's schema, all together
MAX_PATTERN = 1000  # characters of a `pattern`
MAX_INTEGER_BOUND = 10**18  # |minimum|, |maximum| of an integer
MAX_BRANCHES = 5000  # parses open at once (alternatives reachable before a character)


def too_large(param: str, where: str, keyword: str, value, limit) -> errors.BadRequest:
    """The 400 for a value past a limit: `where` in `param`, the keyword, value and limit."""
    return errors.BadRequest(
        f"{param}{where}: {keyword} ({value}) is over this server's limit of {limit} (a "
        "bound that keeps grammar-constrained generation fast and safe)", param=param)


def repetition(item: str, min_items: int, max_items: int | None, separator_rule=None,
               item_rule_is_literal=False) -> str:
    """GBNF for `item` repeated min_items to max_items times (None: no maximum), in
    llama.cpp's `{m,n}` syntax; `separator_rule` between items. Same signature as the
    converter's own `_build_repetition`, which it replaces (see `install`)."""
    if max_items == 0:
        return ""
    if not separator_rule:
        return item + _times(min_items, max_items)
    # item (separator item){m-1,n-1}, optional as a whole when m is 0
    rest = _times(max(min_items - 1, 0), None if max_items is None else max_items - 1)
    repeated = f"{item} ({separator_rule} {item}){rest}" if rest != "{0}" else item
    return f"({repeated})?" if min_items == 0 else repeated


def _times(low: int, high: int | None) -> str:
    if high is None:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def install() -> None:
    """Have llama-cpp-python's schema converter write repetitions with `repetition`. It reads
    `_build_repetition` from its module's globals on each call, so replacing it there is
    enough; the worker hosts this plugin alone, so nothing else sees the change."""
    from llama_cpp import llama_grammar

    llama_grammar._build_repetition = repetition


# A grammar's tokens: literal, class, rule name (before ::= it starts a rule), group, |,
# a quantifier, `.`; whitespace and comments between them.
_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])'
                    r'|(?P<rule>[a-zA-Z0-9_-]+)\s*::=|(?P<ref>[a-zA-Z0-9_-]+)|(?P<op>[()|*+?.])'
                    r'|\{\s*(?P<low>\d+)\s*(?P<comma>,)?\s*(?P<high>\d*)\s*\}|(?P<bad>.)', re.DOTALL)


def check_grammar(gbnf: str, what: str) -> None:
    """A 400 naming `what` for a grammar past the limits: its size, the nesting of its
    parentheses, a repetition past MAX_REPEAT, a repetition of something that can match
    nothing (llama.cpp then keeps one parse per count: `("a"?){0,1000}` took minutes per
    token), or more parses open at once than MAX_BRANCHES. What llama.cpp itself refuses
    (syntax) is left to its parser."""
    size = len(gbnf.encode("utf-8"))
    if size > MAX_GRAMMAR_BYTES:
        raise too_large(what, " (its grammar)", "size", f"{size} bytes",
                        f"{MAX_GRAMMAR_BYTES} bytes")
    nodes = _Parser(gbnf, what).nodes
    nullable = _nullable(nodes)
    for name, alternatives in nodes.items():
        for kind, value, _, high in (item for sequence in alternatives for item in sequence):
            if (high is None or high > 1) and _empty(kind, value, nullable):
                raise errors.BadRequest(
                    f"{what}: rule {name.strip('()')} repeats something that can match "
                    "nothing (nested optional repetitions), which makes the grammar's work "
                    "grow with the product of their bounds; write the inner part so that it "
                    "matches at least one character", param=what)
    for name, count in _branches(nodes, nullable).items():
        if count > MAX_BRANCHES:
            raise too_large(what, f" (its grammar, rule {name.strip('()')})",
                            "the parses open at once", f"over {MAX_BRANCHES}", MAX_BRANCHES)


class _Parser:
    """The grammar as nodes: rule name (or "(n)" for the n-th parenthesized group) ->
    alternatives, each a list of items (kind, value, low, high): kind "lit" (value: the
    literal), "cls", "dot", or "ref" (value: a node's name); high None: no maximum."""

    def __init__(self, gbnf: str, what: str):
        self.what = what
        self.nodes: dict[str, list] = {}
        self.tokens = [m for m in _TOKEN.finditer(gbnf) if m.lastgroup]
        self.at = 0
        self.depth = 0
        while self.at < len(self.tokens):
            token = self.tokens[self.at]
            if token.lastgroup != "rule":
                return  # not a grammar llama.cpp reads: its parser will say so
            self.at += 1
            self.nodes[token.group("rule")] = self.alternatives()

    def alternatives(self) -> list:
        out = [self.sequence()]
        while self.take("|"):
            out.append(self.sequence())
        return out

    def sequence(self) -> list:
        items = []
        while self.at < len(self.tokens):
            token = self.tokens[self.at]
            kind, op = token.lastgroup, token.group("op")
            if kind == "rule" or op in ("|", ")"):
                break
            self.at += 1
            if op == "(":
                self.depth += 1
                if self.depth > MAX_NESTING:
                    raise too_large(self.what, " (its grammar)", "nesting of parentheses",
                                    f"over {MAX_NESTING}", MAX_NESTING)
                kind, value = "ref", f"({len(self.nodes)})"
                self.nodes[value] = []  # its number taken before the groups inside it
                self.nodes[value] = self.alternatives()
                self.take(")")
                self.depth -= 1
            elif kind in ("lit", "cls", "ref") or op == ".":
                kind, value = (kind, token.group(kind)) if op is None else ("dot", op)
            else:
                continue  # a stray token: llama.cpp's parser refuses the grammar
            items.append((kind, value, *self.quantifier()))
        return items

    def quantifier(self) -> tuple[int, int | None]:
        low, high = 1, 1
        while self.at < len(self.tokens):
            token = self.tokens[self.at]
            op = token.group("op")
            if op in ("*", "+", "?"):
                low, high = {"*": (0, None), "+": (low, None), "?": (0, high)}[op]
            elif token.group("low") is not None:
                bounds = [token.group("low"), token.group("high")]
                if any(len(b) > 9 or int(b) > MAX_REPEAT for b in bounds if b):
                    raise too_large(self.what, " (its grammar)", "the repetition",
                                    token.group(0), MAX_REPEAT)
                low = int(bounds[0])
                high = (int(bounds[1]) if bounds[1] else None) if token.group("comma") else low
            else:
                break
            self.at += 1
        return low, high

    def take(self, op: str) -> bool:
        if self.at < len(self.tokens) and self.tokens[self.at].group("op") == op:
            self.at += 1
            return True
        return False


def _empty(kind: str, value: str, nullable: set[str]) -> bool:
    """Whether an item's atom can match the empty string."""
    return value == '""' if kind == "lit" else kind == "ref" and value in nullable


def _nullable(nodes: dict[str, list]) -> set[str]:
    """The nodes that can match the empty string. A worklist, linear in the grammar's size:
    an alternative waits for the nodes it needs to be known nullable."""
    owners: list[str] = []  # alternative -> its node
    waiting: list[int] = []  # alternative -> nodes it still waits for
    needed_by: dict[str, list[int]] = {}
    ready: list[str] = []
    for name, alternatives in nodes.items():
        for sequence in alternatives:
            refs = [value for kind, value, low, _ in sequence if low > 0 and kind == "ref"]
            if any(low > 0 and kind != "ref" and not _empty(kind, value, set())
                   for kind, value, low, _ in sequence):
                continue  # reads a character: never empty
            owners.append(name)
            waiting.append(len(refs))
            for ref in refs:
                needed_by.setdefault(ref, []).append(len(owners) - 1)
            if not refs:
                ready.append(name)
    found: set[str] = set()
    while ready:
        name = ready.pop()
        if name not in found:
            found.add(name)
            for alternative in needed_by.get(name, ()):
                waiting[alternative] -= 1
                if waiting[alternative] == 0:
                    ready.append(owners[alternative])
    return found


def _branches(nodes: dict[str, list], nullable: set[str]) -> dict[str, int]:
    """For each node, how many parses it opens before reading a character: the stacks
    llama.cpp checks every candidate token against at its start. Depth first without
    recursion (a chain of rules may be as long as the grammar); a node met again inside
    itself counts once; counts stop growing past the limit."""
    counts: dict[str, int] = {}
    opened: set[str] = set()  # its first atoms are being counted (on the current path)
    for root in nodes:
        stack = [root]
        while stack:
            name = stack[-1]
            if name in counts:
                stack.pop()
            elif name not in opened:
                opened.add(name)
                stack.extend(value for value, kind in _first_atoms(nodes.get(name, []),
                                                                   nullable)
                             if kind == "ref" and value not in counts and value not in opened)
            else:
                total = sum(counts.get(value, 1) if kind == "ref" else 1
                            for value, kind in _first_atoms(nodes.get(name, []), nullable))
                counts[name] = min(max(total, 1), MAX_BRANCHES + 1)
                stack.pop()
    return counts


def _first_atoms(alternatives: list, nullable: set[str]):
    """(value, kind) of each atom a parse of `alternatives` may start with."""
    for sequence in alternatives:
        for kind, value, low, _ in sequence:
            yield value, kind
            if low > 0 and not _empty(kind, value, nullable):
                break
