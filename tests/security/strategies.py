"""Hypothesis strategies shared by the fuzz tests of the peer-facing decoders.

:func:`mutated` damages a valid encoding the way a hostile or broken peer
would: bytes or characters replaced, inserted, deleted or repeated, and the
end cut off.  The valid inputs come from the message strategies of
:mod:`tests.wire.test_messages` and from real signed events.
"""

from __future__ import annotations

from hypothesis import strategies as st

from bitfitech.testing import EDITS, SPECIAL_BYTES, S, edited


@st.composite
def mutated(draw: st.DrawFn, original: S, pieces: st.SearchStrategy[S]) -> S:
    """
    ``original`` changed by one to four random edits.

    :param original: a valid encoding.
    :param pieces: what to put in where the edit replaces or inserts.
    :return: the damaged encoding (equal to ``original`` now and then, when
        an edit undoes itself).
    """
    value = original
    for _ in range(draw(st.integers(1, 4))):
        size = len(value)
        edit = draw(st.sampled_from(EDITS))
        start = draw(st.integers(0, size))
        end = draw(st.integers(start, min(size, start + 16)))
        value = edited(value, edit, start, end, lambda: draw(pieces))
    return value


byte_pieces = st.binary(min_size=1, max_size=8) | st.sampled_from(SPECIAL_BYTES)
"""Bytes to insert: random, or the ones that matter to JSON and UTF-8."""


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """
    Cut ``data`` into chunks of the given sizes (cycled), the last one shorter.

    :param sizes: chunk sizes, each at least 1.
    """
    chunks, at, index = [], 0, 0
    while at < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[at : at + size])
        at += size
        index += 1
    return chunks


chunk_sizes = st.lists(st.integers(1, 64), min_size=1, max_size=8) | st.just([1 << 20])
"""How a peer's bytes arrive: in small random pieces, or all at once."""
