"""Hub datasets: a name (with its config and revision) loaded as named splits, failures as one-line errors."""

from __future__ import annotations

import datasets
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from loratune.data.readers import one_line
from loratune.errors import DataError
from loratune.hub import LOGIN, exception_chain, gated_message, hub_error_message, use_cache_only_if_unreachable

INSTEAD = "pass a local path (a folder with train/test files, or --train-file) or use tweets"


def load_hub(name: str, revision: str | None = None) -> datasets.DatasetDict:
    """A hub dataset's splits: ``name``, ``name:config`` or ``name/config`` (``glue/sst2``), at ``revision``.

    Hub failures (offline, gated, not found) become one-line DataErrors."""
    attempts: list[tuple[str, str | None]]
    if ":" in name:
        path, config = name.split(":", 1)
        attempts = [(path, config)]
    elif name.count("/") == 1:
        first, second = name.split("/")
        attempts = [(first, second), (name, None)]  # "glue/sst2" first, then the repo "org/name"
    elif name.count("/") == 2:
        org, repo, config = name.split("/")
        attempts = [(f"{org}/{repo}", config)]
    else:
        attempts = [(name, None)]
    last: Exception | None = None
    use_cache_only_if_unreachable()  # fail at once, not after a minute of retries
    for path, config in attempts:
        try:
            result = datasets.load_dataset(path, config, revision=revision)
        except Exception as err:  # classified below; a name that is not found tries the next reading
            message = _hub_error_message(err, name)
            if message is not None and not _not_found(err):
                raise DataError(message) from err
            last = err
            continue
        if not isinstance(result, datasets.DatasetDict):
            raise DataError(f"hub dataset '{name}' did not load as named splits; pass a local path instead.")
        return result
    message = _hub_error_message(last, name) if last is not None else None
    raise DataError(
        message
        or f"cannot load hub dataset '{name}': {one_line(last)}; check the name (glue/sst2 for a config) "
        "or pass a local path or tweets."
    ) from last


def _hub_error_message(err: BaseException, name: str) -> str | None:
    """:func:`~loratune.hub.hub_error_message`, plus datasets' own ``DatasetNotFoundError``.

    datasets re-raises a gated dataset's ``DatasetNotFoundError`` ``from None``, dropping the hub's
    ``GatedRepoError``; its message is then the only sign of the gate.
    """
    message = hub_error_message(err, "dataset", name, INSTEAD)
    if message is not None:
        return message
    not_found = next((e for e in exception_chain(err) if isinstance(e, DatasetNotFoundError)), None)
    if not_found is None:
        return None
    if "gated" in str(not_found).lower():
        return gated_message("dataset", name)
    return (
        f"dataset '{name}' is not on the Hugging Face hub, or is private; check the name (private: {LOGIN}), "
        f"or {INSTEAD}"
    )


def _not_found(err: BaseException) -> bool:
    """True when the hub says the repository does not exist (or is hidden), not gated."""
    for e in exception_chain(err):
        if isinstance(e, GatedRepoError) or (isinstance(e, DatasetNotFoundError) and "gated" in str(e).lower()):
            return False
        if isinstance(e, (RepositoryNotFoundError, DatasetNotFoundError)):
            return True
    return False
