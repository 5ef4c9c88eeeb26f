"""Process-wide torch settings (threads, cuDNN flags, matmul precision) are set for a run and put back."""

from __future__ import annotations

import threading

import pytest
import torch
from guardkit.config import Budget, RunConfig
from guardkit.engine import Engine
from guardkit.errors import ConfigError
from guardkit.testing import TinyFaceModelPlugin
from guardkit.torch_settings import TorchSettings, set_torch, torch_settings


def _other_threads() -> int:
    return 2 if torch.get_num_threads() != 2 else 1


def test_settings_hold_inside_and_are_restored_after_an_error():
    before = TorchSettings.current()
    threads = _other_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_settings(threads=threads, cudnn_benchmark=not before.cudnn_benchmark,
                            cudnn_deterministic=not before.cudnn_deterministic,
                            matmul_precision="medium" if before.matmul_precision != "medium" else "high") as inside:
            assert torch.get_num_threads() == threads == inside.threads
            assert torch.backends.cudnn.benchmark is (not before.cudnn_benchmark)
            assert torch.backends.cudnn.deterministic is (not before.cudnn_deterministic)
            assert torch.get_float32_matmul_precision() != before.matmul_precision
            raise RuntimeError("inside")
    assert TorchSettings.current() == before


def test_decorator_restores_what_the_call_set():
    before = TorchSettings.current()

    @torch_settings()
    def run() -> int:
        set_torch(threads=_other_threads(), cudnn_benchmark=not before.cudnn_benchmark)
        return torch.get_num_threads()

    assert run() != before.threads
    assert TorchSettings.current() == before


def test_blocks_overlapping_in_two_threads_restore_once_the_last_ends():
    """serve workers overlap: the first to end must not undo the settings another still runs under, and
    the last restores what was there before the first began (cuDNN's flag is process-wide)."""
    before = torch.backends.cudnn.benchmark
    steps = {name: threading.Event() for name in ("a_in", "b_in", "a_out", "b_out", "checked")}
    seen: dict[str, bool] = {}

    def worker(me: str, wait_before_enter: str | None, wait_before_leave: str) -> None:
        if wait_before_enter:
            steps[wait_before_enter].wait(10)
        with torch_settings(cudnn_benchmark=not before):
            steps[f"{me}_in"].set()
            steps[wait_before_leave].wait(10)
        steps[f"{me}_out"].set()

    a = threading.Thread(target=worker, args=("a", None, "b_in"))
    b = threading.Thread(target=worker, args=("b", "a_in", "checked"))
    a.start(), b.start()
    steps["a_out"].wait(10)
    seen["after_a"] = torch.backends.cudnn.benchmark  # b is still inside its block
    steps["checked"].set()
    a.join(10), b.join(10)
    assert steps["b_out"].is_set()
    assert seen["after_a"] is (not before)
    assert torch.backends.cudnn.benchmark is before


def test_bad_values_are_one_line_errors():
    before = TorchSettings.current()
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        with torch_settings(threads=0):
            pass
    with pytest.raises(ConfigError, match="matmul precision"):
        set_torch(matmul_precision="fastest")
    assert TorchSettings.current() == before


def test_a_protect_run_leaves_the_process_settings_as_they_were(faces_dir):
    """``RunConfig(threads=...)`` holds for the run only: afterwards the caller's thread count and cuDNN flags
    are what they were (the engine used to leave its thread count behind)."""
    engine = Engine(plugins=[TinyFaceModelPlugin()])
    before = TorchSettings.current()
    threads = _other_threads()
    seen: list[int] = []
    run = RunConfig(budget=Budget(eps=4 / 255, steps=2), threads=threads)
    result = engine.protect([faces_dir / "obama_small.jpg"], face_model="tiny", run=run,
                            on_step=lambda step, steps: seen.append(torch.get_num_threads()))
    assert [p.status for p in result.photos] == ["protected"]
    assert seen and set(seen) == {threads}  # the run's setting held while it ran
    assert TorchSettings.current() == before
