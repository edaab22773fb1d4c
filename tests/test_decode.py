"""Undoing Content-Encoding (fetch.decode): whole streams decode exactly, however the
bytes arrive; streams cut short or with something after their end do not."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pithcrawl.errors import BadResponse, IncompleteBody
from pithcrawl.fetch.decode import PIECE, Decoder


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": _gzip,
    "deflate": zlib.compress,  # with the zlib wrapper, as RFC 9110 says
    "raw-deflate": lambda d: zlib.compress(d)[2:-4],  # as some servers send it
}


def _decode(encoding: str, data: bytes, chunk: int) -> bytes:
    decoder = Decoder("deflate" if encoding == "raw-deflate" else encoding, "u")
    out = b"".join(
        piece for i in range(0, len(data), chunk) for piece in decoder.feed(data[i : i + chunk])
    )
    decoder.finish()
    return out


bodies = st.builds(
    lambda head, run, tail: head + b"\0" * run + tail,
    st.binary(max_size=300),
    st.sampled_from([0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 7, 3 * PIECE]),
    st.binary(max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(bodies, st.sampled_from(sorted(ENCODERS)), st.sampled_from([1, 7, 1000, PIECE, 1 << 20]))
@example(b"\0" * (PIECE + 1), "raw-deflate", 1 << 20)  # a run past the last piece's edge
def test_every_encoding_decodes_exactly_however_it_arrives(body, encoding, chunk):
    """Any body, runs across a piece's edge included (a raw deflate stream whose last
    bytes expand past a piece was refused as cut short), in chunks of any size."""
    assert _decode(encoding, ENCODERS[encoding](body), chunk) == body


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_a_stream_cut_anywhere_is_incomplete_or_refused(encoding):
    """Every strict prefix of a stream is cut short (or not a stream at all): never a
    body handed on as if whole."""
    body = bytes(range(256)) * 300 + b"\0" * (PIECE + 3)
    whole = ENCODERS[encoding](body)
    for end in range(1, len(whole), max(1, len(whole) // 50)):
        with pytest.raises((IncompleteBody, BadResponse)):
            _decode(encoding, whole[:end], 4096)
