"""What the exllamav2 and exllamav3 adapters share: building a dynamic-generator job, and
turning a library failure during load into a clear load error."""

from __future__ import annotations

from pathlib import Path

from llama_api import errors
from llama_api.contract.records import LoadContext
from llama_api_exllama.generation import Sampling
from llama_api_exllama.options import LoadOptions


class DynamicJobs:
    """Mixin for an adapter with `_torch`, `_Job` and `sampling_arguments(sampling)`."""

    def make_job(
        self,
        input_ids: list[int],
        max_new_tokens: int,
        sampling: Sampling,
        stop_token_ids: list[int],
        identifier,
    ):
        ids = self._torch.tensor([input_ids], dtype=self._torch.long)
        return self._Job(
            input_ids=ids,
            max_new_tokens=max_new_tokens,
            seed=sampling.seed,
            stop_conditions=list(stop_token_ids),
            identifier=identifier,
            **self.sampling_arguments(sampling),
        )


def load_with(adapter_class, library: str, folder: Path, opts: LoadOptions,
              context: LoadContext):
    """Build the adapter; a library error becomes a ModelLoadError naming the folder."""
    try:
        return adapter_class(folder, opts, context)
    except errors.LlamaApiError:
        raise
    except Exception as exc:
        kind = "out of GPU memory" if "out of memory" in str(exc).lower() else type(exc).__name__
        raise errors.ModelLoadError(
            f"{library} could not load {folder.name}: {kind}: {exc}"
        ) from exc
