"""perf.per_example_noise: each example's noise is a counter-based function of one shared key and its position in
the global batch, so any process count draws the same noise per example, each process only its own rows."""

import math

import pytest
import torch

from progdistill.training.noise import counter_normal, global_batch_noise, noise_for, per_example_noise, splitmix64


def test_counter_normals_are_standard_normal():
    z = counter_normal(torch.tensor([12345]), torch.arange(400_000))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs((z.abs() < 1).double().mean().item() - 0.6827) < 0.005  # one standard deviation
    assert abs((z.abs() < 2).double().mean().item() - 0.9545) < 0.003
    lag = torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()
    assert abs(lag) < 0.01  # neighbouring counters are uncorrelated
    other = counter_normal(torch.tensor([12346]), torch.arange(400_000))
    assert abs(torch.corrcoef(torch.stack([z, other]))[0, 1].item()) < 0.01  # and so are neighbouring keys


def test_splitmix64_matches_the_reference_values():
    # splitmix64 seeded with 0: its first outputs, from the reference implementation (as unsigned 64-bit).
    outputs = splitmix64(torch.tensor([0, 1, 2]) * (0x9E3779B97F4A7C15 - (1 << 64))).tolist()
    assert [o % (1 << 64) for o in outputs] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("noise", [global_batch_noise, per_example_noise])
def test_any_process_count_draws_the_same_noise_per_example(noise):
    shape, n = (3, 4, 4), 8
    whole_gen = torch.Generator().manual_seed(7)
    whole = noise(shape, torch.float32, torch.device("cpu"), whole_gen, n, slice(0, n))
    for world in (2, 4):
        parts = []
        for rank in range(world):
            gen = torch.Generator().manual_seed(7)
            size = n // world
            parts.append(noise(shape, torch.float32, torch.device("cpu"), gen, n, slice(rank * size, (rank + 1) * size)))
            assert torch.equal(gen.get_state(), whole_gen.get_state())  # every process's generator moves alike
        assert torch.equal(torch.cat(parts), whole)


def test_per_example_noise_draws_one_scalar_and_changes_every_step():
    gen = torch.Generator().manual_seed(0)
    first = per_example_noise((2,), torch.float32, torch.device("cpu"), gen, 4, slice(0, 4))
    second = per_example_noise((2,), torch.float32, torch.device("cpu"), gen, 4, slice(0, 4))
    assert not torch.equal(first, second)
    reference = torch.Generator().manual_seed(0)
    torch.randint(0, 1 << 62, (1,), generator=reference)
    torch.randint(0, 1 << 62, (1,), generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())  # two scalar draws, nothing more
    assert noise_for(True) is per_example_noise and noise_for(False) is global_batch_noise
    assert math.isfinite(first.abs().max().item())
