"""Work split across `accelerate launch` processes (one process when not launched).

`process_state` is Accelerate's PartialState, with the gloo backend on machines without CUDA (Accelerate then
treats --multi_gpu processes as MULTI_CPU). `over_items` maps a function over items, each process taking every
n-th one, and hands every process all the results in the items' order: as one process would have produced them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from accelerate import PartialState

T = TypeVar("T")
R = TypeVar("R")


def process_state() -> PartialState:
    """This process's place among the launched ones (gloo on CPU-only machines, so CPU runs can be launched too)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def process_device() -> str:
    """The device this process computes on, as a string a model's `.to()` takes ("cpu" or "cuda:N")."""
    device = process_state().device
    return "cpu" if device.type == "cpu" else str(device)


def main_process_lock(folder: str | Path) -> AbstractContextManager[None]:
    """The output lock, taken by the main process only (the others write nothing there)."""
    from contextlib import nullcontext

    from relscope.io import output_lock

    return output_lock(folder) if process_state().is_main_process else nullcontext()


def over_items(fn: Callable[[T], R], items: Sequence[T], desc: str, progress: bool) -> list[R]:
    """`fn` over `items` shared across the processes; every process gets all results, in the items' order."""
    from accelerate.utils import gather_object

    state = process_state()
    mine = range(state.process_index, len(items), state.num_processes)
    done = [(i, fn(items[i])) for i in tqdm(mine, desc=desc, disable=not progress or not state.is_main_process)]
    if state.num_processes > 1:
        done = gather_object(done)
    return [result for _, result in sorted(done, key=lambda item: item[0])]
