import pytest

from localfm.errors import LocalFMError
from localfm.io.jsonfile import read_json


@pytest.mark.parametrize(
    "content, kwargs, needle",
    [
        (None, {"what": "features file"}, "features file not found"),
        ("{not json", {}, "not valid JSON"),
        (b"\xff\xfe", {}, "not valid JSON"),
        ("[1, 2]", {"expect_object": True}, "expected a JSON object"),
    ],
)
def test_bad_json_inputs_are_one_line_errors(tmp_path, content, kwargs, needle):
    path = tmp_path / "x.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LocalFMError, match=needle) as exc:
        read_json(path, **kwargs)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_directory_and_valid_file(tmp_path):
    with pytest.raises(LocalFMError, match="found a directory"):
        read_json(tmp_path)
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json", expect_object=True) == {"a": [1, 2]}


def test_other_os_errors_are_one_localfm_error(tmp_path):
    # Only FileNotFoundError/IsADirectoryError were mapped; e.g. ENAMETOOLONG escaped as OSError (exit 1).
    path = tmp_path / ("x" * 300 + ".json")
    with pytest.raises(LocalFMError, match="cannot read hyperparameters file"):
        read_json(path, what="hyperparameters file")
