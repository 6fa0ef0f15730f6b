"""The names dgm gives things in MLflow and the one model-URI parser."""

from __future__ import annotations

import pytest

from dgm.errors import DgmError
from dgm.tracking.names import ModelRef, experiment_name, model_name, parse_model_uri


def test_names():
    assert experiment_name("digits") == "dgm-digits"
    assert model_name("digits", "gan") == "dgm-digits-gan"


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/dgm-digits-gan@champion", {"name": "dgm-digits-gan", "alias": "champion"}),
    ("models:/dgm-digits-gan/3", {"name": "dgm-digits-gan", "version": "3"}),
    ("models:/dgm-digits-gan", {"name": "dgm-digits-gan"}),
    ("models:/m-0123abcd", {"logged_model": "m-0123abcd"}),
    ("runs:/abc123/generator", {"run_id": "abc123"}),
    ("runs:/abc123", {"run_id": "abc123"}),
])
def test_parse_model_uri(uri, expected):
    assert parse_model_uri(uri) == ModelRef(uri, **expected)


@pytest.mark.parametrize("uri", ["models:/", "models:/@champion", "models:/x@", "runs:/",
                                 "s3://bucket/model", "dgm-digits-gan"])
def test_parse_model_uri_refuses_anything_else_in_one_line(uri):
    with pytest.raises(DgmError, match=r"give models:/NAME@ALIAS, models:/NAME/VERSION or "
                                       r"runs:/RUN_ID$"):
        parse_model_uri(uri)
