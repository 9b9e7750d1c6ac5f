"""benchmark/measurement.py: interleaved timing, peak memory of one step, the environment."""

import torch

from dynamic_atss.benchmark.measurement import environment, measure_peak_memory, time_interleaved


def test_calls_are_interleaved_and_each_model_goes_first_in_turn():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = time_interleaved(steps, warmup=1, iters=3, log=lambda _msg: None)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # the first of each round rotates
    assert all(len(wall) == len(cpu) == 3 for wall, cpu in timings.values())


def test_peak_memory_of_a_step_that_allocates_is_measured():
    def step():
        block = torch.ones(64, 2**20 // 4 * 4, dtype=torch.uint8)  # 64 MiB
        return int(block[0, 0])

    peak, kind = measure_peak_memory(step, torch.device("cpu"))
    assert kind and peak is not None and peak >= 0
    env = environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
