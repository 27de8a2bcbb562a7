import json

import pytest

from speechtok.formats import check_format, read_versioned_json


class E(ValueError):
    pass


def test_versioned_json(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"format": "x", "format_version": 1}))
    assert read_versioned_json(p, "x", 2, E, "thing")["format_version"] == 1
    assert check_format({"format": "x", "format_version": "2"}, p, "x", 2, E, "thing")  # safetensors strings
    with pytest.raises(E, match=r"a.json: thing format version 3 is newer than this speechtok reads \(<= 2\)"):
        check_format({"format": "x", "format_version": 3}, p, "x", 2, E, "thing")
    with pytest.raises(E, match="invalid thing format version 'abc'"):
        check_format({"format": "x", "format_version": "abc"}, p, "x", 2, E, "thing")
    with pytest.raises(E, match="not a speechtok thing \\(format='y'\\)"):
        check_format({"format": "y", "format_version": 1}, p, "x", 2, E, "thing")
    with pytest.raises(E, match="not a speechtok thing \\(format='list'\\)"):
        check_format([], p, "x", 2, E, "thing")
    p.write_text("{oops")
    with pytest.raises(E, match="a.json: unreadable thing"):
        read_versioned_json(p, "x", 2, E, "thing")


def test_get_field_refuses_what_is_no_finite_float():
    import math

    from speechtok.formats import get_field

    for bad in (10 ** 400, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match="'x' must be float"):
            get_field({"x": bad}, "x", float, "f.json", ValueError, "config")
    assert get_field({"x": 3}, "x", float, "f.json", ValueError, "config") == 3.0
