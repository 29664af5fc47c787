import pytest

from service.cleaning import Cleaner
from service.config import DEFAULT_PII_KEYS


@pytest.fixture
def cleaner():
    return Cleaner(DEFAULT_PII_KEYS)


def test_strings_are_trimmed_at_every_depth(cleaner):
    result, removed = cleaner.clean({"name": "  John Doe  ", "owner": {"city": " Pune\n", "tags": [" a ", {"x": " y "}]}})
    assert result == {"name": "John Doe", "owner": {"city": "Pune", "tags": ["a", {"x": "y"}]}}
    assert removed == []


def test_pii_keys_are_dropped_and_named_but_values_are_not_recorded(cleaner):
    data = {"email": "a@b.c", "Phone": "555", "SSN": "1", "pii": "x", "account": "xyz", "balance": 5000,
            "owner": {"card-number": "4111", "creditCard": "4111", "name": " Ann "}}
    result, removed = cleaner.clean(data)
    assert result == {"account": "xyz", "balance": 5000, "owner": {"name": "Ann"}}
    assert sorted(removed) == sorted(["email", "Phone", "SSN", "pii", "owner.card-number", "owner.creditCard"])
    assert "4111" not in repr(removed) and "a@b.c" not in repr(removed)


def test_request_id_envelope_is_not_part_of_the_result(cleaner):
    result, removed = cleaner.clean({"request_id": "abc", "account": "xyz", "balance": 5000})
    assert result == {"account": "xyz", "balance": 5000}
    assert removed == []


def test_non_string_values_are_kept_exactly(cleaner):
    data = {"n": 1, "f": 2.5, "b": False, "none": None, "list": [1, None, True]}
    assert cleaner.clean(data) == (data, [])


def test_the_deny_list_is_configurable():
    result, removed = Cleaner(["balance"]).clean({"balance": 1, "email": "kept@example.com"})
    assert result == {"email": "kept@example.com"}
    assert removed == ["balance"]


@pytest.mark.parametrize("data, kept, removed", [
    pytest.param(
        {"accounts": [{"id": 1, "email": "a@b.c"}, {"id": 2, "Phone": "555"}]},
        {"accounts": [{"id": 1}, {"id": 2}]}, ["accounts[].email", "accounts[].Phone"], id="objects-in-a-list",
    ),
    pytest.param(
        {"a": {"b": {"c": {"d": {"e": {"SSN": "1", "keep": " x "}}}}}},
        {"a": {"b": {"c": {"d": {"e": {"keep": "x"}}}}}}, ["a.b.c.d.e.SSN"], id="five-levels-deep",
    ),
    pytest.param(
        {"rows": [[{"owner": {"CARD_NUMBER": "4111", "Credit-Card": "4111", "cc.number": "4111", "name": "Ann"}}]]},
        {"rows": [[{"owner": {"name": "Ann"}}]]},
        ["rows[][].owner.CARD_NUMBER", "rows[][].owner.Credit-Card", "rows[][].owner.cc.number"], id="any-case-and-punctuation",
    ),
    pytest.param(
        {"history": [{"events": [{"who": {"e-mail": "x", "E_Mail": "y", "password": "p", "Pii": "z"}}]}]},
        {"history": [{"events": [{"who": {}}]}]},
        ["history[].events[].who.e-mail", "history[].events[].who.E_Mail", "history[].events[].who.password",
         "history[].events[].who.Pii"], id="lists-within-lists",
    ),
])
def test_pii_keys_are_dropped_at_any_depth_and_in_any_spelling(cleaner, data, kept, removed):
    result, dropped = cleaner.clean(data)
    assert result == kept
    assert sorted(dropped) == sorted(removed)
    assert not {"a@b.c", "555", "4111", "p"} & set(repr(result).split("'"))
