import json

import numpy as np
import pytest

from localfm.errors import LocalFMError
from localfm.fm.inference import render
from localfm.io.content import parse_instances


def test_sparse_dense_and_nested_dense_instances():
    doc = {"instances": [
        {"data": {"features": {"keys": [4, 1], "shape": [5], "values": [2.0, 3.0]}}},
        {"features": [0, 0, 1.5, 0, 0]},
        {"data": {"features": {"values": [1, 0, 0, 0, 1]}}},
    ]}
    X = parse_instances(doc, feature_dim=5)
    assert X.dtype == np.float32 and X.shape == (3, 5)
    np.testing.assert_array_equal(X.toarray(), [[0, 3, 0, 0, 2], [0, 0, 1.5, 0, 0], [1, 0, 0, 0, 1]])


def test_render_formats():
    s = np.array([0.25, 0.5], np.float32)
    assert json.loads(render(s, "binary_classifier", "application/json")) == {
        "predictions": [{"score": 0.25, "predicted_label": 0.0}, {"score": 0.5, "predicted_label": 1.0}]}
    assert render(s, "regressor", "application/jsonlines") == '{"score": 0.25}\n{"score": 0.5}\n'
    with pytest.raises(LocalFMError, match="accept 'text/csv'"):
        render(s, "regressor", "text/csv")


def test_bool_is_not_a_number():
    with pytest.raises(LocalFMError, match="finite numbers"):
        parse_instances({"instances": [{"features": [True, 0]}]}, feature_dim=2)
