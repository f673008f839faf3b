"""The incremental multipart/related parser and the request-body decoder.

The central property: however a body is cut into chunks, the parser finds the same parts
with the same headers and bytes (RFC 2046 5.1.1 syntax), and it never hands out more
than one chunk (plus a delimiter's length) at a time.
"""

from __future__ import annotations

import gzip
import itertools
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openvna.errors import BadRequestError, RequestTooLargeError, UnsupportedMediaTypeError
from openvna.web.dicomweb.stow import request_form
from openvna.web.multipart import (
    MAX_COMPRESSION_RATIO,
    BodyDecoder,
    MultipartParser,
    boundary_delimiter,
    parse_part_headers,
)

BOUNDARY = "b0undary-7f3e"
Part = tuple[dict[str, str], bytes]


class Collector:
    """A PartHandler keeping every part in memory (fine for tests)."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self.largest_piece = 0
        self._headers: dict[str, str] | None = None
        self._data = bytearray()

    def part_begin(self, headers: dict[str, str]) -> None:
        assert self._headers is None, "part_begin before the previous part ended"
        self._headers = headers
        self._data = bytearray()

    def part_data(self, data: memoryview) -> None:
        assert self._headers is not None
        self.largest_piece = max(self.largest_piece, len(data))
        self._data += data

    def part_end(self) -> None:
        assert self._headers is not None
        self.parts.append((self._headers, bytes(self._data)))
        self._headers = None


def body_of(
    parts: list[Part],
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
    leading_crlf: bool = False,
) -> bytes:
    chunks = [preamble]
    for index, (headers, content) in enumerate(parts):
        crlf = b"\r\n" if (index or preamble or leading_crlf) else b""
        lines = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        chunks.append(crlf + f"--{BOUNDARY}".encode() + padding + b"\r\n" + lines + b"\r\n")
        chunks.append(content)
    chunks.append(f"\r\n--{BOUNDARY}--".encode() + padding + b"\r\n" + epilogue)
    return b"".join(chunks)


def parse(chunks: list[bytes], boundary: str = BOUNDARY) -> Collector:
    collector = Collector()
    parser = MultipartParser(boundary, collector)
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return collector


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(body)) for cut in cuts})
    bounds = [0, *points, len(body)]
    return [body[start:end] for start, end in itertools.pairwise(bounds)]


# -- whole bodies ---------------------------------------------------------------------------

DICOM_PARTS: list[Part] = [
    ({"content-type": "application/dicom"}, b"\x00" * 128 + b"DICM" + bytes(range(256)) * 40),
    ({"content-type": "application/dicom", "content-location": "x/1"}, b"\r\n--almost\r\n"),
    ({"content-type": "application/octet-stream"}, b""),
]


def test_parts_with_their_headers_and_bytes() -> None:
    collector = parse([body_of(DICOM_PARTS)])
    assert collector.parts == DICOM_PARTS


def test_preamble_epilogue_and_transport_padding_are_ignored() -> None:
    body = body_of(
        DICOM_PARTS, preamble=b"This is a preamble.", epilogue=b"the end\r\n", padding=b" \t "
    )
    assert parse([body]).parts == DICOM_PARTS


def test_leading_crlf_before_the_first_delimiter() -> None:
    # dicomweb-client starts its bodies with CRLF--boundary
    assert parse([body_of(DICOM_PARTS, leading_crlf=True)]).parts == DICOM_PARTS


def test_closing_delimiter_without_final_crlf() -> None:
    body = body_of(DICOM_PARTS)
    assert body.endswith(b"--\r\n")
    assert parse([body[:-2]]).parts == DICOM_PARTS


def test_part_without_headers() -> None:
    body = f"--{BOUNDARY}\r\n\r\ncontent\r\n--{BOUNDARY}--".encode()
    assert parse([body]).parts == [({}, b"content")]


def test_folded_and_repeated_headers() -> None:
    headers = parse_part_headers(
        b"Content-Type: multipart/related;\r\n type=application/dicom\r\n"
        b"CONTENT-LOCATION: first\r\ncontent-location: second"
    )
    assert headers == {
        "content-type": "multipart/related; type=application/dicom",
        "content-location": "first",
    }


# -- chunk-split property -------------------------------------------------------------------

header_values = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20
)
contents = st.binary(max_size=600).filter(lambda b: f"--{BOUNDARY}".encode() not in b)
parts_strategy = st.lists(
    st.tuples(st.fixed_dictionaries({"content-type": header_values}), contents),
    min_size=1,
    max_size=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=parts_strategy,
    preamble=st.binary(max_size=40).filter(lambda b: b"--" not in b),
    epilogue=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=40),
)
def test_any_split_into_chunks_gives_the_same_parts(
    parts: list[Part], preamble: bytes, epilogue: bytes, cuts: list[int]
) -> None:
    body = body_of(parts, preamble=preamble, epilogue=epilogue)
    assert parse([body]).parts == parts
    assert parse(split(body, cuts)).parts == parts


@settings(max_examples=50, deadline=None)
@given(parts=parts_strategy)
def test_byte_by_byte_feeding_gives_the_same_parts(parts: list[Part]) -> None:
    body = body_of(parts)
    assert parse([body[i : i + 1] for i in range(len(body))]).parts == parts


def test_memory_is_bounded_by_the_chunk_size_whatever_the_part_size() -> None:
    chunk = 64 * 1024
    content = random.Random(5).randbytes(8 * 1024 * 1024)
    body = body_of([({"content-type": "application/dicom"}, content)])
    collector = parse(split(body, list(range(chunk, len(body), chunk))))
    assert collector.parts[0][1] == content
    assert collector.largest_piece <= chunk + len(boundary_delimiter(BOUNDARY))


# -- malformed bodies -----------------------------------------------------------------------


def test_missing_closing_delimiter_is_an_error() -> None:
    body = body_of(DICOM_PARTS)
    truncated = body[: body.rindex(b"\r\n--")]
    with pytest.raises(BadRequestError, match="closing delimiter"):
        parse([truncated])


def test_body_without_any_delimiter_is_an_error() -> None:
    with pytest.raises(BadRequestError, match="no part"):
        parse([b"just some bytes, no boundary"])


def test_boundary_inside_a_part_is_an_error() -> None:
    body = f"--{BOUNDARY}\r\n\r\nabc\r\n--{BOUNDARY}X\r\n\r\ndef\r\n--{BOUNDARY}--".encode()
    with pytest.raises(BadRequestError, match="transport padding"):
        parse([body])


def test_oversized_part_headers_are_an_error() -> None:
    body = f"--{BOUNDARY}\r\nX-Long: {'a' * 20000}\r\n\r\nabc\r\n--{BOUNDARY}--".encode()
    with pytest.raises(BadRequestError, match="headers exceed"):
        parse(split(body, [100, 5000, 17000]))


def test_malformed_header_line_is_an_error() -> None:
    with pytest.raises(BadRequestError, match="header line"):
        parse([f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--".encode()])


@pytest.mark.parametrize("boundary", ["", "x" * 71, "grüße"])
def test_invalid_boundaries(boundary: str) -> None:
    with pytest.raises(BadRequestError, match="boundary"):
        boundary_delimiter(boundary)


def test_boundary_of_70_characters_with_spaces() -> None:
    boundary = "a b" * 23 + "c"
    body = f"--{boundary}\r\n\r\nxyz\r\n--{boundary}--".encode()
    assert parse([body], boundary=boundary).parts == [({}, b"xyz")]


# -- the request's Content-Type ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ('multipart/related; type="application/dicom"; boundary="a b:c"', "a b:c"),
        ("multipart/related; type=application/dicom; boundary=abc", "abc"),
        ('Multipart/Related; Boundary=abc; Type="Application/DICOM"', "abc"),
    ],
)
def test_quoted_and_unquoted_boundary_parameters(content_type: str, boundary: str) -> None:
    form = request_form(content_type)
    assert form.boundary == boundary
    assert form.part_type == "application/dicom"


def test_content_type_errors() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        request_form(None)
    with pytest.raises(UnsupportedMediaTypeError):
        request_form("multipart/related; boundary=abc")
    with pytest.raises(UnsupportedMediaTypeError):
        request_form("multipart/mixed; type=application/dicom; boundary=abc")
    with pytest.raises(BadRequestError):
        request_form('multipart/related; type="application/dicom"')
    assert request_form("application/dicom").boundary is None


# -- the body decoder -----------------------------------------------------------------------


def decode_all(decoder: BodyDecoder, chunks: list[bytes]) -> bytes:
    out = bytearray()
    for chunk in chunks:
        for piece in decoder.decode(chunk):
            out += piece
    for piece in decoder.finish():
        out += piece
    return bytes(out)


PAYLOAD = random.Random(11).randbytes(300_000) + bytes(700_000)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400_000), max_size=20))
def test_gzip_decodes_the_same_whatever_the_chunks(cuts: list[int]) -> None:
    compressed = gzip.compress(PAYLOAD)
    assert decode_all(BodyDecoder("gzip", 10**9), split(compressed, cuts)) == PAYLOAD


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("deflate", zlib.compress),  # RFC 9110: the zlib format
        ("deflate", lambda data: zlib.compress(data, wbits=-15)),  # raw deflate, as some send
        ("x-gzip", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:1000]) + gzip.compress(data[1000:])),
        ("identity", lambda data: data),
        (None, lambda data: data),
    ],
)
def test_content_codings(encoding: str | None, compress: object) -> None:
    assert callable(compress)
    encoded = compress(PAYLOAD)
    assert decode_all(BodyDecoder(encoding, 10**9), split(encoded, [1, 5000, 70000])) == PAYLOAD


def test_pieces_are_bounded_and_a_bomb_is_refused_early() -> None:
    bomb = gzip.compress(bytes(256 * 1024 * 1024), compresslevel=9)  # 256 MiB in ~250 kB
    decoder = BodyDecoder("gzip", 10**12)
    largest = 0
    with pytest.raises(RequestTooLargeError, match="decompression bomb"):
        for chunk in split(bomb, list(range(65536, len(bomb), 65536))):
            for piece in decoder.decode(chunk):
                largest = max(largest, len(piece))
    assert largest <= 1024 * 1024
    assert decoder.decoded <= 40 * 1024 * 1024  # stopped soon after 32 MiB
    assert decoder.decoded > MAX_COMPRESSION_RATIO * decoder.received


def test_compression_ratio_limit_is_a_parameter() -> None:
    """``http.max_compression_ratio``: a site may accept very sparse objects (SEG)."""
    sparse = gzip.compress(bytes(48 * 1024 * 1024), compresslevel=9)  # about 1000:1
    chunks = split(sparse, list(range(65536, len(sparse), 65536)))
    with pytest.raises(RequestTooLargeError, match="expands more than 200 times"):
        decode_all(BodyDecoder("gzip", 10**12), chunks)
    relaxed = BodyDecoder("gzip", 10**12, max_compression_ratio=2000)
    assert len(decode_all(relaxed, chunks)) == 48 * 1024 * 1024


def test_decoded_size_is_limited_too() -> None:
    encoded = gzip.compress(bytes(3_000_000))  # under the ratio check's 32 MiB threshold
    with pytest.raises(RequestTooLargeError, match="decoded request body exceeds"):
        decode_all(BodyDecoder("gzip", 2_000_000), [encoded[:1000], encoded[1000:]])


def test_received_size_is_limited() -> None:
    decoder = BodyDecoder(None, 100_000)
    list(decoder.decode(bytes(60_000)))
    with pytest.raises(RequestTooLargeError, match="exceeds the limit of 100000"):
        list(decoder.decode(bytes(60_000)))


def test_truncated_corrupt_and_trailing_data_are_errors() -> None:
    compressed = gzip.compress(PAYLOAD)
    with pytest.raises(BadRequestError, match="truncated"):
        decode_all(BodyDecoder("gzip", 10**9), [compressed[:-20]])
    with pytest.raises(BadRequestError, match="corrupt"):
        decode_all(BodyDecoder("gzip", 10**9), [b"\x1f\x8b\x08\x00garbage-garbage"])
    with pytest.raises(BadRequestError, match="after the end"):
        decode_all(BodyDecoder("deflate", 10**9), [zlib.compress(b"abc") + b"more"])
    with pytest.raises(BadRequestError, match="truncated"):
        decode_all(BodyDecoder("gzip", 10**9), [b"\x1f"])


@pytest.mark.parametrize("encoding", ["br", "compress", "gzip, gzip", "zstd"])
def test_unknown_or_stacked_codings_are_415(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        BodyDecoder(encoding, 10**9)
