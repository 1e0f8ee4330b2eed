"""Turn the config's ``device`` string into a :class:`torch.device`, failing early and clearly."""

from __future__ import annotations

import torch

from apis.config import ConfigError


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` -> a usable device.

    ``"auto"`` picks CUDA when available, else the CPU. Under a distributed launch ``local_rank``
    chooses the GPU for ``"auto"`` and ``"cuda"`` (one process per GPU); an explicit ``"cuda:N"``
    is kept as written.

    Raises:
        ConfigError: an unknown name, CUDA asked for but not available, or a GPU index out of range.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"config key 'device': device {name!r} is not one of: auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': device {name!r} was asked for but CUDA is not available on this "
                          "machine")
    if name == "cuda":
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    else:
        suffix = name.split(":", 1)[1]
        if not suffix.isdigit():
            raise ConfigError(f"config key 'device': device {name!r}: the GPU index must be a non-negative integer")
        index = int(suffix)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"config key 'device': device {name!r}: GPU index {index} does not exist (this machine "
                          f"has {count})")
    return torch.device("cuda", index)
