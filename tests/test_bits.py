"""Tests for bitlm.core.bits: the 9-bit even-parity frame codec."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlm.core.bits import (
    DATA_BITS,
    FRAME_BITS,
    FRAME_TABLE,
    ParityError,
    bits_to_bytes,
    bits_to_text,
    bytes_to_bits,
    decode_bits,
    enforce_parity,
    parity_error_frames,
    text_to_bits,
)

# --------------------------------------------------------------------------------------
# Format and table
# --------------------------------------------------------------------------------------


def test_constants() -> None:
    assert FRAME_BITS == 9
    assert DATA_BITS == 8


def test_frame_table_matches_definition() -> None:
    assert FRAME_TABLE.shape == (256, 9)
    assert FRAME_TABLE.dtype == torch.uint8
    for b in (0, 1, 0x41, 0x7F, 0x80, 0xAA, 0xFF):
        data = [int(c) for c in format(b, "08b")]
        assert FRAME_TABLE[b].tolist() == [*data, sum(data) % 2]
    # Every row decodes to its index and has an even number of ones.
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1])
    assert (FRAME_TABLE[:, :8].long() @ weights).tolist() == list(range(256))
    assert (FRAME_TABLE.long().sum(dim=1) % 2 == 0).all()
    assert set(FRAME_TABLE.unique().tolist()) == {0, 1}


def test_known_vectors() -> None:
    assert bytes_to_bits(b"A").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0]
    assert bytes_to_bits(b"\x07").tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert bytes_to_bits(b"\x00").tolist() == [0] * 9
    assert bytes_to_bits(b"\xff").tolist() == [1] * 8 + [0]
    a_frame = [0, 1, 0, 0, 0, 0, 0, 1, 0]
    bell_frame = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert bytes_to_bits(b"A\x07").tolist() == [*a_frame, *bell_frame]
    assert bits_to_bytes(torch.tensor([0, 1, 0, 0, 0, 0, 0, 1, 0], dtype=torch.uint8)) == b"A"
    assert text_to_bits("A").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0]


def test_empty() -> None:
    bits = bytes_to_bits(b"")
    assert bits.shape == (0,)
    assert bits.dtype == torch.uint8
    assert bits_to_bytes(bits) == b""
    assert decode_bits(bits) == (b"", 0)
    assert bits_to_text(bits) == ""
    assert parity_error_frames(bits).tolist() == []
    fixed, changed = enforce_parity(bits)
    assert fixed.shape == (0,)
    assert changed == 0


# --------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_roundtrip_random_bytes(data: bytes) -> None:
    bits = bytes_to_bits(data)
    assert bits.dtype == torch.uint8
    assert bits.shape == (9 * len(data),)
    assert bits_to_bytes(bits) == data
    assert decode_bits(bits, "repair") == (data, 0)
    assert decode_bits(bits, "replace") == (data, 0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_every_frame_has_even_parity(data: bytes) -> None:
    frames = bytes_to_bits(data).reshape(-1, 9).long()
    assert ((frames == 0) | (frames == 1)).all()
    assert (frames.sum(dim=1) % 2 == 0).all()
    # Parity bit is the XOR of the 8 data bits.
    assert torch.equal(frames[:, 8], frames[:, :8].sum(dim=1) % 2)
    assert parity_error_frames(bytes_to_bits(data)).numel() == 0
    _, changed = enforce_parity(bytes_to_bits(data))
    assert changed == 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_roundtrip_random_text(text: str) -> None:
    bits = text_to_bits(text)
    assert bits.shape == (9 * len(text.encode("utf-8")),)
    assert bits_to_text(bits) == text


@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda b: st.lists(st.binary(min_size=5, max_size=5), min_size=b, max_size=b)
    )
)
def test_batched_equals_rowwise_property(rows: list[bytes]) -> None:
    batch = torch.tensor([list(r) for r in rows], dtype=torch.uint8)
    bits = bytes_to_bits(batch)
    assert bits.shape == (len(rows), 45)
    for i, row in enumerate(rows):
        assert torch.equal(bits[i], bytes_to_bits(row))


# --------------------------------------------------------------------------------------
# Input types and shapes
# --------------------------------------------------------------------------------------


def test_batched_encoding_equals_rowwise() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (4, 17), dtype=torch.uint8, generator=gen)
    bits = bytes_to_bits(batch)
    assert bits.shape == (4, 17 * 9)
    assert bits.dtype == torch.uint8
    for i in range(4):
        assert torch.equal(bits[i], bytes_to_bits(batch[i]))
        assert torch.equal(bits[i], bytes_to_bits(bytes(batch[i].tolist())))
        assert bits_to_bytes(bits[i]) == bytes(batch[i].tolist())


def test_higher_rank_and_empty_batch() -> None:
    x = torch.arange(2 * 3 * 5, dtype=torch.uint8).reshape(2, 3, 5)
    bits = bytes_to_bits(x)
    assert bits.shape == (2, 3, 45)
    assert torch.equal(bits[1, 2], bytes_to_bits(x[1, 2]))
    assert bytes_to_bits(torch.zeros((3, 0), dtype=torch.uint8)).shape == (3, 0)


def test_input_types_agree() -> None:
    data = bytes(range(256))
    expected = bytes_to_bits(data)
    assert expected.shape == (256 * 9,)
    assert torch.equal(expected.reshape(256, 9), FRAME_TABLE)
    arr = np.frombuffer(data, dtype=np.uint8)  # read-only array
    for variant in (
        bytearray(data),
        memoryview(data),
        arr,
        arr.copy(),
        torch.tensor(list(data), dtype=torch.uint8),
        torch.tensor(list(data), dtype=torch.int64),  # other integer dtypes in range are fine
        np.array(list(data), dtype=np.int32),
    ):
        assert torch.equal(bytes_to_bits(variant), expected), type(variant)
    # Non-contiguous views and multi-byte memoryview formats encode their raw bytes.
    assert torch.equal(bytes_to_bits(memoryview(data)[::2]), bytes_to_bits(data[::2]))
    ints = np.array([1, 2], dtype="<u2")
    assert bytes_to_bits(memoryview(ints)).tolist() == bytes_to_bits(b"\x01\x00\x02\x00").tolist()
    strided = torch.tensor(list(data), dtype=torch.uint8)[::3]
    assert bits_to_bytes(bytes_to_bits(strided)) == data[::3]


def test_decode_accepts_integer_and_bool_tensors() -> None:
    bits = bytes_to_bits(b"hi!")
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.bool):
        assert bits_to_bytes(bits.to(dtype)) == b"hi!"
    assert bits_to_bytes(bits.numpy().astype(np.int64)) == b"hi!"
    # Decoding a non-contiguous view works too.
    doubled = torch.stack([bits, bits], dim=1).reshape(-1)[::2]
    assert bits_to_bytes(doubled) == b"hi!"


def test_invalid_utf8_bytes_roundtrip_and_text_replaces() -> None:
    data = b"ok \xff\xfe \xc3"  # not valid UTF-8
    bits = bytes_to_bits(data)
    assert bits_to_bytes(bits) == data
    assert bits_to_text(bits) == "ok \ufffd\ufffd \ufffd"
    assert bits_to_text(text_to_bits("héllo ✓ 🙂")) == "héllo ✓ 🙂"


# --------------------------------------------------------------------------------------
# Corruption: detection, strict / repair / replace, enforce_parity
# --------------------------------------------------------------------------------------

MESSAGE = b"Hello, parity frames!"
DATA_FLIPS = {2: 0, 5: 7, 13: 3}  # frame index -> data bit position flipped (0 = b7)
PARITY_FLIPS = (0, 9, 20)  # frames whose parity bit is flipped
BAD = sorted([*DATA_FLIPS, *PARITY_FLIPS])


def corrupted() -> torch.Tensor:
    bits = bytes_to_bits(MESSAGE).clone()
    for frame, k in DATA_FLIPS.items():
        bits[9 * frame + k] ^= 1
    for frame in PARITY_FLIPS:
        bits[9 * frame + 8] ^= 1
    return bits


def test_parity_error_frames_finds_exactly_corrupted() -> None:
    bad = parity_error_frames(corrupted())
    assert bad.dtype == torch.int64
    assert bad.tolist() == BAD == [0, 2, 5, 9, 13, 20]


def test_strict_raises_with_all_bad_frames() -> None:
    bits = corrupted()
    with pytest.raises(ParityError) as info:
        decode_bits(bits)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.bad_frames == BAD
    assert "6 of 21 frames" in str(err)
    assert "0, 2, 5, 9, 13, 20" in str(err)
    with pytest.raises(ParityError) as info2:
        bits_to_bytes(bits)
    assert info2.value.bad_frames == BAD
    with pytest.raises(ParityError):
        bits_to_text(bits)


def test_repair_keeps_data_bits() -> None:
    data, n_bad = decode_bits(corrupted(), "repair")
    assert n_bad == 6
    expected = bytearray(MESSAGE)
    for frame, k in DATA_FLIPS.items():
        expected[frame] ^= 1 << (7 - k)  # the flipped data bit is trusted
    assert data == bytes(expected)
    # Frames with only a flipped parity bit come back unchanged.
    for frame in PARITY_FLIPS:
        assert data[frame] == MESSAGE[frame]
    assert bits_to_text(corrupted(), "repair") == bytes(expected).decode("utf-8", "replace")


def test_replace_substitutes_bad_frames() -> None:
    data, n_bad = decode_bits(corrupted(), "replace")
    assert n_bad == 6
    expected = bytearray(MESSAGE)
    for frame in BAD:
        expected[frame] = ord("?")
    assert data == bytes(expected)
    assert data == b"?e?lo? pa?ity?frames?"
    data0, _ = decode_bits(corrupted(), "replace", replacement=0)
    assert [i for i, b in enumerate(data0) if b == 0] == BAD
    assert bits_to_text(corrupted(), "replace", replacement=ord("#")).count("#") == 6


def test_enforce_parity_fixes_and_counts() -> None:
    bits = corrupted()
    before = bits.clone()
    fixed, changed = enforce_parity(bits)
    assert changed == 6
    assert torch.equal(bits, before)  # input untouched
    assert fixed.dtype == torch.uint8
    assert fixed.shape == bits.shape
    assert parity_error_frames(fixed).numel() == 0
    # Data bits are kept, so the strict decode equals the repair decode.
    assert bits_to_bytes(fixed) == decode_bits(bits, "repair")[0]
    # Only parity bits differ from the input.
    diff = torch.nonzero(fixed != bits).reshape(-1)
    assert (diff % 9 == 8).all()
    assert (diff // 9).tolist() == BAD
    again, changed_again = enforce_parity(fixed)
    assert changed_again == 0
    assert torch.equal(again, fixed)


def test_enforce_parity_batched_and_dtypes() -> None:
    rows = torch.stack([bytes_to_bits(b"abcd"), bytes_to_bits(b"wxyz")])
    noisy = rows.clone()
    noisy[0, 8] ^= 1  # parity of frame 0, row 0
    noisy[1, 9 * 3 + 1] ^= 1  # data bit of frame 3, row 1
    noisy[1, 9 * 1 + 8] ^= 1  # parity of frame 1, row 1
    fixed, changed = enforce_parity(noisy.to(torch.int64))
    assert changed == 3
    assert fixed.shape == (2, 36)
    assert fixed.dtype == torch.uint8
    assert bits_to_bytes(fixed[0]) == b"abcd"
    assert bits_to_bytes(fixed[1]) == bytes([ord("w"), ord("x"), ord("y"), ord("z") ^ 0x40])
    fixed_bool, changed_bool = enforce_parity(noisy.bool())
    assert changed_bool == 3
    assert torch.equal(fixed_bool, fixed)


def test_all_frames_bad_message_truncated() -> None:
    bits = bytes_to_bits(bytes(30)).clone()
    bits[8::9] = 1  # every parity bit wrong
    with pytest.raises(ParityError) as info:
        bits_to_bytes(bits)
    err = info.value
    assert err.bad_frames == list(range(30))
    msg = str(err)
    assert "30 of 30 frames" in msg
    assert "… and 10 more" in msg
    assert "19" in msg and ", 20," not in msg
    assert decode_bits(bits, "replace") == (b"?" * 30, 30)
    assert decode_bits(bits, "repair") == (bytes(30), 30)


def test_parity_error_pickles() -> None:
    err = ParityError([3, 1000], n_frames=2000)
    clone = pickle.loads(pickle.dumps(err))
    assert isinstance(clone, ParityError)
    assert clone.bad_frames == [3, 1000]
    assert str(clone) == str(err)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def test_length_not_multiple_of_nine() -> None:
    bits = torch.zeros(10, dtype=torch.uint8)
    for fn in (bits_to_bytes, bits_to_text, parity_error_frames, decode_bits, enforce_parity):
        with pytest.raises(ValueError, match="multiple of 9") as info:
            fn(bits)
        assert "10" in str(info.value)


def test_value_other_than_zero_or_one() -> None:
    bits = bytes_to_bits(b"ab").clone()
    bits[11] = 2
    with pytest.raises(ValueError, match="0 or 1") as info:
        bits_to_bytes(bits)
    assert "index 11" in str(info.value)
    with pytest.raises(ValueError, match="0 or 1"):
        enforce_parity(bits.reshape(1, -1))
    with pytest.raises(ValueError, match="0 or 1"):
        decode_bits(bits.to(torch.int64) * -1, "repair")


def test_float_bits_rejected() -> None:
    bits = bytes_to_bits(b"a").float()
    for fn in (bits_to_bytes, parity_error_frames, enforce_parity):
        with pytest.raises(ValueError, match="float32"):
            fn(bits)
    with pytest.raises(ValueError):
        bits_to_bytes(bits.numpy())


def test_decode_requires_1d() -> None:
    bits = torch.stack([bytes_to_bits(b"a"), bytes_to_bits(b"b")])
    with pytest.raises(ValueError, match="1-D"):
        bits_to_bytes(bits)
    with pytest.raises(ValueError, match="1-D"):
        parity_error_frames(bits)
    with pytest.raises(ValueError, match="1-D"):
        decode_bits(torch.tensor(1, dtype=torch.uint8))


def test_bad_errors_mode_and_replacement() -> None:
    bits = bytes_to_bits(b"a")
    with pytest.raises(ValueError, match="errors must be one of"):
        decode_bits(bits, "ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="errors must be one of"):
        bits_to_text(bits, "replace_all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replacement"):
        decode_bits(bits, "replace", replacement=256)


def test_encode_validation() -> None:
    with pytest.raises(TypeError, match="text_to_bits"):
        bytes_to_bits("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bytes_to_bits([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32"):
        bytes_to_bits(torch.zeros(3))
    with pytest.raises(ValueError, match="float64"):
        bytes_to_bits(np.zeros(3))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        bytes_to_bits(torch.tensor([1, 256]))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        bytes_to_bits(np.array([-1], dtype=np.int16))
    with pytest.raises(ValueError, match="scalar"):
        bytes_to_bits(torch.tensor(5, dtype=torch.uint8))
    with pytest.raises(TypeError):
        text_to_bits(b"bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Scale: vectorized, so a few MB is fast
# --------------------------------------------------------------------------------------


def test_large_roundtrip() -> None:
    gen = np.random.default_rng(0)
    data = gen.integers(0, 256, size=2_000_000, dtype=np.uint8).tobytes()
    bits = bytes_to_bits(data)
    assert bits.shape == (18_000_000,)
    assert bits_to_bytes(bits) == data
    fixed, changed = enforce_parity(bits)
    assert changed == 0
    assert torch.equal(fixed, bits)


def test_packed_codec_matches_table_across_blocks() -> None:
    """The CPU codec works on packed groups of 8 frames in blocks of BLOCK_FRAMES: its output
    equals the table definition for lengths that end mid-group and mid-block, and every bad
    frame is found, including those on group and block edges."""
    from bitlm.core.bitpack import BLOCK_FRAMES

    gen = np.random.default_rng(1)
    for n in (1, 7, 8, 9, BLOCK_FRAMES - 1, BLOCK_FRAMES + 5):
        values = gen.integers(0, 256, size=n, dtype=np.uint8)
        bits = bytes_to_bits(values)
        assert torch.equal(bits, FRAME_TABLE[torch.from_numpy(values).long()].reshape(-1))
        bad = sorted(
            {0, n // 2, max(0, n - 8), n - 1} | ({BLOCK_FRAMES} if n > BLOCK_FRAMES else set())
        )
        corrupted = bits.clone()
        corrupted[torch.tensor(bad) * FRAME_BITS + torch.tensor(bad) % FRAME_BITS] ^= 1
        with pytest.raises(ParityError) as err:
            bits_to_bytes(corrupted)
        assert err.value.bad_frames == bad
        assert decode_bits(corrupted, "repair")[1] == len(bad)


def test_encode_accepts_strided_and_byte_swapped_arrays() -> None:
    values = np.arange(40, dtype=np.uint8)
    expected = bytes_to_bits(values[::-1].tobytes())
    assert torch.equal(bytes_to_bits(values[::-1]), expected)
    assert torch.equal(bytes_to_bits(values[::-1].astype(">u2")), expected)
