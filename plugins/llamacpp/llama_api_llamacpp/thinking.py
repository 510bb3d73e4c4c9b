"""Models that think in tags: which tags, and where a request's output starts.

The tags come from the `reasoning_tags` option (`["<think>", "</think>"]`, or `false` to
keep the thinking in the answer), else from the chat template: a template that mentions
`</think>` belongs to a model that thinks in `<think>` tags (Qwen3, DeepSeek-R1 and SmolLM3
templates drop earlier answers' thinking with it; some never spell the opening tag). The
split itself is the core's `ReasoningSplitter`.
"""

from __future__ import annotations

from llama_api import errors
from llama_api.text.reasoning import THINK, ReasoningSplitter, ReasoningTags


def reasoning_tags(model_id: str, option, template_source: str | None) -> ReasoningTags | None:
    """The model's thinking tags, or None when it doesn't think in tags."""
    if option is False:
        return None
    if option is True:
        return THINK
    if option is not None:
        if (not isinstance(option, (list, tuple)) or len(option) != 2
                or not all(isinstance(tag, str) and tag for tag in option)):
            raise errors.ModelLoadError(
                f"{model_id}: reasoning_tags must be two non-empty strings (opening and "
                f"closing tag, e.g. [\"<think>\", \"</think>\"]) or false, not {option!r}")
        return ReasoningTags(*option)
    if template_source and THINK.close in template_source:
        return THINK
    return None


def prompt_opens(prompt: str, tags: ReasoningTags) -> bool:
    """Whether the prompt ends inside an open tag (a generation prompt ending `<think>\\n`):
    the output then starts in the thinking."""
    return prompt.rstrip().endswith(tags.open)


class ThinkingBudget:
    """Ends a model's thinking after `budget` tokens, as llama-server's reasoning budget does:
    the token source (the batch engine's thread, or the plain path) tells it each token it
    produced, and writes the closing tag's tokens next when it says so; the model then goes
    on with its answer. Its own splitter follows the tags, as the reader's does."""

    def __init__(self, model, tags: ReasoningTags, inside: bool, budget: int):
        self.model = model
        self.splitter = ReasoningSplitter(tags, inside=inside)
        self.left = budget

    def after(self, token: int) -> list[int]:
        """The tokens to write next, in place of samples (none while the budget lasts)."""
        if self.left is None:
            return []
        self.splitter.feed(self.model.piece(token).decode("utf-8", errors="ignore"))
        if self.splitter.state == "inside":
            self.left -= 1
            if self.left <= 0:
                self.left = None  # spent: once
                return list(self.model.close_tag_tokens)
        return []


def thinking_budget(model, request, splitter, prompt_open: bool) -> ThinkingBudget | None:
    """The request's thinking budget, where its thinking is split (a chat answer of a model
    that thinks in tags, free to think)."""
    if request.thinking_budget is None or splitter is None:
        return None
    return ThinkingBudget(model, model.reasoning_tags, prompt_open, request.thinking_budget)


def splitter_for(request, tags: ReasoningTags | None, prompt_open: bool, free_form: bool):
    """A splitter for this request's output, or None: only chat answers of a thinking model
    that asks for the split, and only when the output is not held to JSON (a schema or a
    tool call leaves no room to think)."""
    if tags is None or not request.split_reasoning or request.messages is None:
        return None
    if not free_form:
        return None
    return ReasoningSplitter(tags, inside=prompt_open)
