"""KEY=VALUE option text, read one way for `dipfill fill --dip` and `dipfill eval --method`."""

from __future__ import annotations

import re

import pytest

from dipfill.errors import InputError
from dipfill.keyvalue import parse_pairs, parse_value, split_top_level


def test_values_are_json_where_they_parse_else_the_bare_string() -> None:
    assert parse_value("300") == 300 and isinstance(parse_value("300"), int)
    assert parse_value("0.005") == 0.005
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[4,4,4]") == (4, 4, 4)
    assert parse_value("[[1,2],[3]]") == ((1, 2), (3,))  # tuples at every depth
    assert parse_value("bilinear") == "bilinear"
    assert parse_value(" bilinear ") == "bilinear" and parse_value(" 3 ") == 3
    assert parse_value("") == ""


def test_pairs_parse_keys_and_values_and_name_the_option_in_errors() -> None:
    assert parse_pairs(["steps=300", " upsample = bilinear", "channels_skip=[4,4]"]) == {
        "steps": 300, "upsample": "bilinear", "channels_skip": (4, 4)}
    assert parse_pairs(["lr=0.1", "lr=0.2"]) == {"lr": 0.2}  # a later key wins
    assert parse_pairs(["name=a=b"]) == {"name": "a=b"}  # the first '=' splits
    assert parse_pairs([]) == {}
    for bad in ("steps", "=3", " =3"):
        with pytest.raises(InputError, match=re.escape(f"--dip takes KEY=VALUE, got {bad!r}")):
            parse_pairs([bad], flag="--dip")


def test_split_top_level_keeps_bracketed_commas() -> None:
    assert split_top_level("a=1,b=[1,2],c={\"x\":1,\"y\":2}") == ["a=1", "b=[1,2]", 'c={"x":1,"y":2}']
    assert split_top_level(" a=1 , ,b=2,") == ["a=1", "b=2"]
    assert split_top_level("") == []
