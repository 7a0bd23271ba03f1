import pytest

from rlhf.algos.lookup import lookup


def test_lookup_returns_entry_and_lists_valid_names_on_miss():
    table = {"b": 2, "a": 1}
    assert lookup(table, "a", what="thing") == 1
    with pytest.raises(ValueError, match=r"^unknown thing 'c' \(config key algo\.thing\); valid names: a, b$"):
        lookup(table, "c", what="thing", key="algo.thing")
    with pytest.raises(ValueError, match=r"^unknown thing None; valid names: a, b$"):
        lookup(table, None, what="thing")
    with pytest.raises(ValueError, match="valid names"):
        lookup(table, ["a"], what="thing")  # unhashable
