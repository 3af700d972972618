import pytest
import torch

from fastattn.ops.key_lengths import key_padding_lengths


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.float32])
def test_prefix_rows_give_lengths_and_others_minus_one(dtype):
    rows = [[1] * 5 + [0] * 2, [1] * 7, [0] * 7, [1, 0, 1, 0, 0, 0, 0], [0] + [1] * 6,
            [1] * 6 + [0]]
    mask = torch.tensor(rows).to(dtype)
    assert key_padding_lengths(mask).tolist() == [5, 7, 0, -1, -1, 6]
    assert key_padding_lengths(mask).dtype == torch.int32


def test_strided_mask_and_bad_rank():
    mask = torch.ones(3, 17, dtype=torch.bool)
    mask[1, 9:] = False
    assert key_padding_lengths(mask[:, ::2]).tolist() == [9, 5, 9]
    with pytest.raises(ValueError, match="mask must be"):
        key_padding_lengths(mask[None])
