"""The shared class-conditional sampler draws its first noise exactly as diffusers does."""

from __future__ import annotations

import pytest
import torch

from imagegen.pipelines.class_conditional import draw_noise, labels_from


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("as_list", [True, False])
def test_noise_equals_diffusers_randn_tensor(count: int, as_list: bool) -> None:
    from diffusers.utils.torch_utils import randn_tensor

    def generators() -> torch.Generator | list[torch.Generator]:
        made = [torch.Generator("cpu").manual_seed(7 + i) for i in range(count)]
        return made if as_list else made[0]

    shape = (count, 1, 8, 8)
    ours = draw_noise(shape, generator=generators(), device=torch.device("cpu"), dtype=torch.float32)
    theirs = randn_tensor(shape, generator=generators(), device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(ours, theirs)


def test_labels_read_every_name() -> None:
    assert labels_from({"7": "7, seven, digit 7"}) == {"7": 7, "seven": 7, "digit 7": 7}
    assert labels_from(None) == {}
