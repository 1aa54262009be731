"""One ``--set`` dialect (config.parse_set_item / parse_set_items): YAML values, one-line errors."""

from __future__ import annotations

import pytest

from tinyrobust.config import apply_overrides, check_like, parse_set_items
from tinyrobust.errors import AttackError, ConfigError

ATTACK = {"depth": 2, "form": "ATTACK.KEY=VALUE", "example": "pgd.steps=50", "error": AttackError}


def test_values_are_yaml_and_keys_nest():
    items = ["pgd.steps=50", "pgd.eot=true", "zoo.learning_rate=1e-3", "x.y=abc", "a.b=[1, 2]", "a.c=", "pgd.steps=7"]
    assert parse_set_items(items) == {
        "pgd": {"steps": 7, "eot": True},  # the later item wins
        "zoo": {"learning_rate": 0.001},
        "x": {"y": "abc"},
        "a": {"b": [1, 2], "c": None},
    }
    # training applies the same items to its config dict
    assert apply_overrides({}, ["train.lr=1e-3"]) == {"train": {"lr": 0.001}}


@pytest.mark.parametrize("bad", ["pgd=5", "steps=5", "pgd.steps", "pgd..steps=1", "pgd.steps.x=1"])
def test_attack_form_errors_are_one_line(bad):
    with pytest.raises(AttackError) as err:
        parse_set_items([bad], **ATTACK)
    assert str(err.value) == f"--set {bad!r}: expected ATTACK.KEY=VALUE, e.g. pgd.steps=50"


def test_unparsable_and_unsafe_values():
    with pytest.raises(ConfigError, match=r"^--set a.b: cannot parse value '\[1'"):
        parse_set_items(["a.b=[1"])
    with pytest.raises(AttackError, match="cannot parse value"):
        parse_set_items(["pgd.x=!!python/object/apply:os.system [echo]"], **ATTACK)
    with pytest.raises(ConfigError, match="was set to a value, not a mapping"):
        parse_set_items(["a.b=1", "a.b.c=2"])


def test_check_like_uses_the_schema_messages():
    assert check_like("pgd.steps", 50, 10) == 50
    assert check_like("pgd.lr", 1, 0.5) == 1.0 and isinstance(check_like("pgd.lr", 1, 0.5), float)
    assert check_like("masking.x", [1], None) == [1]
    with pytest.raises(AttackError, match=r"^pgd.steps: expected an integer, got 'many'$"):
        check_like("pgd.steps", "many", 10, AttackError)
    with pytest.raises(ConfigError, match="expected true or false"):
        check_like("pgd.eot", 1, False)
