"""The containers' request content types: one parser each, one wording for errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.io.content import (
    CSV,
    JSON,
    JSONLINES,
    RECORDIO,
    choose_content_type,
    media_type,
    parse_instances,
    parse_request,
    read_csv,
)
from localfm.io.recordio import MAGIC_BYTES, write_dense


def test_csv_plain_and_label_first() -> None:
    X, y = read_csv(b"1,2\n\n3,4\n", "q.csv")
    assert y is None and X.dtype == np.float32
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    X, y = read_csv(b"7,1,2\n8,3,4\n", "t.csv", label_first=True)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [7, 8])
    with pytest.raises(LocalFMError, match=r"t\.csv: line 2: 2 columns, the first line has 3"):
        read_csv(b"7,1,2\n8,3\n", "t.csv", label_first=True)
    with pytest.raises(LocalFMError, match="line 1: expected a label and at least one feature"):
        read_csv(b"7\n", "t.csv", label_first=True)
    with pytest.raises(LocalFMError, match=r"line 1: expected comma-separated numbers \(label first\)"):
        read_csv(b"a,b\n", "t.csv", label_first=True)
    with pytest.raises(LocalFMError, match="not UTF-8"):
        read_csv(b"\xff\n", "t.csv")


def test_one_json_parser_for_both_algorithms() -> None:
    doc = {"instances": [{"features": [1, 0, 2]},
                         {"data": {"features": {"keys": [2, 0], "shape": [3], "values": [5, 6]}}},
                         {"data": {"features": {"values": [0, 7, 0]}}}]}
    X = parse_instances(doc, "req")
    np.testing.assert_array_equal(X.toarray(), [[1, 0, 2], [6, 0, 5], [0, 7, 0]])
    lines = "\n".join(json.dumps(i) for i in doc["instances"]).encode()
    np.testing.assert_array_equal(parse_request(lines, JSONLINES, where="q.jsonl").toarray(), X.toarray())
    with pytest.raises(LocalFMError, match="req: instance 1: 2 dense features, instance 0 has 3"):
        parse_instances({"instances": [{"features": [1, 2, 3]}, {"features": [1, 2]}]}, "req")
    with pytest.raises(LocalFMError, match="instance 0: 3 dense features, model feature_dim is 4"):
        parse_instances({"instances": [{"features": [1, 2, 3]}]}, "req", feature_dim=4)
    with pytest.raises(LocalFMError, match=r"no NaN or infinity\), got nan"):
        parse_request(b'{"features": [NaN]}', JSONLINES, where="q")
    with pytest.raises(LocalFMError, match=r"sparse features need \"shape\""):
        parse_instances({"instances": [{"data": {"features": {"keys": [0], "values": [1]}}}]}, "req")
    with pytest.raises(LocalFMError, match="q: line 2: not valid JSON"):
        parse_request(b'{"features": [1]}\n{oops\n', JSONLINES, where="q")


def test_content_type_choice() -> None:
    assert media_type("Application/JSON-Lines; charset=utf-8") == JSONLINES
    assert choose_content_type("x.rec", MAGIC_BYTES, None, (RECORDIO, JSON)) == RECORDIO
    assert choose_content_type("x.bin", b"1,2", None, (RECORDIO, JSON)) == RECORDIO  # CSV not taken: default
    assert choose_content_type("x.bin", b"1,2", None, (RECORDIO, CSV)) == CSV
    assert choose_content_type("x", b'{"instances": []}', None, (RECORDIO, JSON)) == JSON
    with pytest.raises(LocalFMError, match="content type: expected one of application/x-recordio-protobuf, "
                                           "application/json, got 'text/csv'"):
        choose_content_type("x", b"", "text/csv", (RECORDIO, JSON))


def test_recordio_requests_name_the_input(tmp_path) -> None:
    write_dense(tmp_path / "q.rec", np.array([[1, 2]], np.float32))
    X = parse_request((tmp_path / "q.rec").read_bytes(), RECORDIO, where="q.rec")
    np.testing.assert_array_equal(np.asarray(X), [[1, 2]])
    with pytest.raises(LocalFMError, match="^q.rec: "):
        parse_request(MAGIC_BYTES + b"\x05\0\0\0abc", RECORDIO, where="q.rec")
