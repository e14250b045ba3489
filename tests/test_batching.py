import numpy as np

from gpt_jax.decoding.batching import bucket, left_pad


def test_buckets():
    assert [bucket(n, 16) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert [bucket(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]


def test_left_pad_positions_mask_and_filler_rows():
    batch = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert batch.tokens.shape == (2, 16)
    assert batch.tokens[0, -3:].tolist() == [5, 6, 7] and batch.tokens[1, -1] == 8
    assert (batch.tokens[0, :-3] == 0).all()
    assert batch.pad_len.tolist() == [13, 15] and batch.lengths.tolist() == [3, 1]
    assert batch.positions[0, -3:].tolist() == [0, 1, 2] and batch.positions[1, -1] == 0
    assert batch.valid.sum(axis=1).tolist() == [3, 1]
    three = left_pad([[1], [2], [3]], pad_id=0)
    assert three.tokens.shape == (4, 16) and three.active.tolist() == [True, True, True, False]
    assert three.num_rows == 3


def test_same_bucket_same_shape():
    assert left_pad([list(range(1, 10))], 0).tokens.shape == left_pad([list(range(1, 15))], 0).tokens.shape
    assert left_pad([list(range(1, 18))], 0).tokens.shape == (1, 32)
    assert np.array_equal(left_pad([[1, 2]], 0, length=4).tokens, [[0, 0, 1, 2]])
