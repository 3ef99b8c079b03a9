"""chunkd.protocol: the request validator, the answers and the frame layout. Pure: no sockets.

The property tests are the contract the server relies on: whatever bytes arrive,
``parse_request`` returns a Request or raises RequestError (``bad_request``/``unknown_command``),
never anything else, so a hostile line can only ever cost its sender an error answer.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.errors import (
    BusyError,
    ChunkdError,
    NotFoundError,
    RequestError,
    StoreError,
    UnknownCommandError,
)
from chunkd.protocol import (
    COMMAND_FIELDS,
    COMMANDS,
    FRAME_END,
    FRAME_ERROR,
    INTERNAL_MESSAGE,
    MAX_FRAME_BYTES,
    MAX_LINE_BYTES,
    MAX_ROUND,
    TRANSFER_FD,
    TRANSFER_FRAMES,
    Request,
    decode_frame_header,
    encode_error,
    encode_frame_header,
    encode_ok,
    encode_request,
    parse_answer,
    parse_request,
)


def line(obj: object) -> bytes:
    return json.dumps(obj).encode()


# -- valid requests ------------------------------------------------------------------------------


def test_every_command_parses_with_its_minimal_fields():
    minimal = {
        "restore": {"client": "1"},
        "export": {"client": "1", "format": "safetensors"},
        "ingest": {"client": "1", "path": "/srv/fl/client_1/r1.pth"},
        "forget": {"client": "1", "round": 240605},
    }
    for cmd in COMMANDS:
        request = parse_request(line({"cmd": cmd, **minimal.get(cmd, {})}))
        assert request.cmd == cmd


def test_restore_fields():
    request = parse_request(
        line({"cmd": "restore", "client": "site-7.a_b", "round": 12, "transfer": "fd"})
    )
    assert request == Request("restore", client_id="site-7.a_b", round_num=12, transfer=TRANSFER_FD)
    latest = parse_request(line({"cmd": "restore", "client": "1", "round": "latest"}))
    assert latest.round_num is None and latest.transfer == TRANSFER_FRAMES


def test_null_means_absent_for_optional_fields():
    assert parse_request(line({"cmd": "list", "client": None})) == Request("list")
    assert parse_request(b'{"cmd":"prune","dry_run":true}').dry_run is True


def test_round_bounds():
    top = parse_request(line({"cmd": "restore", "client": "1", "round": MAX_ROUND}))
    assert top.round_num == 2**63 - 1
    assert parse_request(line({"cmd": "restore", "client": "1", "round": 0})).round_num == 0


# -- invalid requests ----------------------------------------------------------------------------

BAD = {
    "not utf-8": b"\xff\xfe{}",
    "not json": b"{cmd: ping}",
    "trailing garbage": b'{"cmd": "ping"} x',
    "array": b"[]",
    "string": b'"ping"',
    "no cmd": b"{}",
    "cmd not a string": b'{"cmd": 1}',
    "duplicate key": b'{"cmd": "ping", "cmd": "status"}',
    "NaN": b'{"cmd": "restore", "client": "1", "round": NaN}',
    "extra field": b'{"cmd": "status", "verbose": true}',
    "missing client": b'{"cmd": "restore"}',
    "missing path": b'{"cmd": "ingest", "client": "1"}',
    "forget without a round": b'{"cmd": "forget", "client": "1"}',
    "forget latest": b'{"cmd": "forget", "client": "1", "round": "latest"}',
    "missing format": b'{"cmd": "export", "client": "1"}',
    "traversal": b'{"cmd": "restore", "client": "../../etc"}',
    "slash": b'{"cmd": "restore", "client": "1/../2"}',
    "dot": b'{"cmd": "list", "client": "."}',
    "dotdot": b'{"cmd": "list", "client": ".."}',
    "empty id": b'{"cmd": "list", "client": ""}',
    "long id": line({"cmd": "list", "client": "a" * 65}),
    "unicode id": line({"cmd": "list", "client": "client\u00e9"}),
    "newline id": line({"cmd": "list", "client": "1\n"}),
    "int id": b'{"cmd": "list", "client": 1}',
    "negative round": b'{"cmd": "restore", "client": "1", "round": -1}',
    "round 2**63": line({"cmd": "restore", "client": "1", "round": 2**63}),
    "float round": b'{"cmd": "restore", "client": "1", "round": 3.0}',
    "bool round": b'{"cmd": "restore", "client": "1", "round": false}',
    "string round": b'{"cmd": "restore", "client": "1", "round": "3"}',
    "latest for ingest": b'{"cmd": "ingest", "client": "1", "path": "/a", "round": "latest"}',
    "relative path": b'{"cmd": "ingest", "client": "1", "path": "a/b.pth"}',
    "NUL in path": line({"cmd": "ingest", "client": "1", "path": "/a\u0000b"}),
    "surrogate path": b'{"cmd": "ingest", "client": "1", "path": "/a\\ud800"}',
    "dry_run as int": b'{"cmd": "prune", "dry_run": 1}',
    "bad transfer": b'{"cmd": "restore", "client": "1", "transfer": "http"}',
    "bad format": b'{"cmd": "export", "client": "1", "format": "onnx"}',
    "huge int": b'{"cmd": "restore", "client": "1", "round": ' + b"9" * 5000 + b"}",
    "deep nesting": b'{"cmd": "ping", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "too long": b'{"cmd": "ping"}'.ljust(MAX_LINE_BYTES + 1),
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_bad_requests_are_bad_request(raw: bytes):
    with pytest.raises(RequestError) as excinfo:
        parse_request(raw)
    assert type(excinfo.value) is RequestError
    assert excinfo.value.code == "bad_request"
    assert len(str(excinfo.value)) < 300  # a hostile value is quoted briefly, never echoed whole


def test_unknown_command():
    with pytest.raises(UnknownCommandError, match="unknown command 'reboot'") as excinfo:
        parse_request(b'{"cmd": "reboot"}')
    assert excinfo.value.code == "unknown_command"


def test_messages_name_the_field():
    with pytest.raises(RequestError, match='restore: missing field "client"'):
        parse_request(b'{"cmd": "restore"}')
    with pytest.raises(RequestError, match="unknown field 'verbose'"):
        parse_request(b'{"cmd": "status", "verbose": true}')
    with pytest.raises(RequestError, match='field "round"'):
        parse_request(b'{"cmd": "restore", "client": "1", "round": -1}')


# -- properties ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["cmd", "client", "round", "path", "transfer", "format", "dry_run", "x"]
)
request_like = st.dictionaries(
    field_names,
    json_values | st.sampled_from([*COMMANDS, "latest", "1", "../x", "/abs", "fd", "frames"]),
    max_size=5,
)


@given(st.binary(max_size=512))
@settings(max_examples=400, deadline=None)
def test_random_bytes_give_a_request_or_request_error(raw: bytes):
    try:
        request = parse_request(raw)
    except RequestError:
        return
    assert isinstance(request, Request)


@given(request_like)
@settings(max_examples=600, deadline=None)
def test_random_json_gives_a_request_or_request_error(obj: dict[str, object]):
    try:
        request = parse_request(json.dumps(obj).encode())
    except RequestError:
        return
    assert request.cmd in COMMAND_FIELDS
    assert set(obj) - {"cmd"} <= set(COMMAND_FIELDS[request.cmd])
    if request.client_id is not None:
        assert "/" not in request.client_id and request.client_id not in {".", ".."}
    if request.round_num is not None:
        assert 0 <= request.round_num <= MAX_ROUND
    if request.path is not None:
        assert request.path.startswith("/")


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_any_json_document_is_handled(value: object):
    with contextlib.suppress(RequestError):  # anything else fails the test
        parse_request(json.dumps(value).encode())


# -- answers -------------------------------------------------------------------------------------


def test_ok_and_error_answers_roundtrip():
    ok = parse_answer(encode_ok({"pong": True}).rstrip(b"\n"))
    assert ok.ok and ok.result == {"pong": True}
    error = parse_answer(encode_error(NotFoundError("no round 5")))
    assert (error.ok, error.code, error.message) == (False, "not_found", "no round 5")
    assert encode_ok({}).endswith(b"\n") and encode_ok({}).count(b"\n") == 1


def test_internal_errors_say_nothing_inside():
    for exc in (
        ValueError("secret /etc/shadow"),
        StoreError("disk I/O at /srv"),
        ChunkdError("boom"),
    ):
        answer = parse_answer(encode_error(exc))
        assert (answer.code, answer.message) == ("internal", INTERNAL_MESSAGE)
    assert parse_answer(encode_error(BusyError("queue full"))).code == "busy"


def test_answers_are_strict_json():
    with pytest.raises(ValueError):
        encode_ok({"ratio": float("inf")})
    with pytest.raises(TypeError):
        encode_ok({"what": object()})


def test_paths_datetimes_and_sets_become_json():
    import datetime
    import pathlib

    when = datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    answer = parse_answer(encode_ok({"db": pathlib.Path("/a/b.db"), "at": when, "ids": {"2", "1"}}))
    assert answer.result == {"db": "/a/b.db", "at": "2026-05-01T12:00:00+00:00", "ids": ["1", "2"]}


def test_a_malformed_answer_is_the_daemons_fault():
    for raw in (b"nope", b"[]", b'{"ok": true}', b'{"ok": false, "error": {}}'):
        with pytest.raises(ChunkdError) as excinfo:
            parse_answer(raw)
        assert excinfo.value.code == "internal"


def test_encode_request_drops_none():
    assert json.loads(encode_request("list", client=None)) == {"cmd": "list"}
    assert encode_request("ping").endswith(b"\n")


# -- frames --------------------------------------------------------------------------------------


def test_frame_headers():
    assert encode_frame_header(FRAME_END) == b"\x00\x00\x00\x00"
    assert encode_frame_header(FRAME_ERROR) == b"\xff\xff\xff\xff"
    assert decode_frame_header(encode_frame_header(MAX_FRAME_BYTES)) == MAX_FRAME_BYTES
    assert decode_frame_header(b"\xff\xff\xff\xff") == FRAME_ERROR
    with pytest.raises(ChunkdError):
        decode_frame_header(b"\x7f\x00\x00\x00")  # 2 GiB: over the limit
    with pytest.raises(ValueError):
        encode_frame_header(MAX_FRAME_BYTES + 1)
