"""One quantizer table (quant/table.py): config names, layer builders and the exporter's support table use it."""

from __future__ import annotations

import pytest

from tinyrobust.config import ACT_QUANTS, WEIGHT_QUANTS
from tinyrobust.errors import ConfigError
from tinyrobust.quant import ACT_TABLE, WEIGHT_TABLE, act_bits, is_stochastic, weight_bits, weight_quant_kwargs
from tinyrobust.quant.table import resolve


def test_config_names_are_the_table_rows_in_order():
    assert WEIGHT_QUANTS == [q.name for q in WEIGHT_TABLE]
    assert ACT_QUANTS == [q.name for q in ACT_TABLE]
    # the names every config and test has used so far, unchanged
    ints = [f"int{b}" for b in range(2, 9)]
    assert WEIGHT_QUANTS == ["float", *ints, "ternary", "ternary_stats", "stochastic_ternary", "binary"]
    assert ACT_QUANTS == ["float", *ints]


def test_every_row_builds_and_reports_its_bits():
    for q in WEIGHT_TABLE:
        assert weight_bits(q.name) == q.bits
        assert is_stochastic(q.name) == q.stochastic
        kw = weight_quant_kwargs(q.name)
        assert (kw == {}) == (q.brevitas is None)
        if q.brevitas:
            assert kw["weight_quant"] is resolve(q.brevitas)
    for q in ACT_TABLE:
        assert act_bits(q.name) == q.bits


def test_exporter_support_table_is_the_quantizer_table():
    from tinyrobust.export.onnx_export import ACT_SUPPORT, WEIGHT_SUPPORT, WHY_NOT, weight_support

    assert list(WEIGHT_SUPPORT) == WEIGHT_QUANTS and list(ACT_SUPPORT) == ACT_QUANTS
    for q in WEIGHT_TABLE:
        for fmt in ("onnx", "qonnx"):
            assert weight_support(q.name, fmt) == q.support(fmt)
            # a format that cannot express a quantizer says why
            assert (q.support(fmt) is None) == ((q.name, fmt) in WHY_NOT)


def test_unknown_name_fails_listing_the_table():
    with pytest.raises(ConfigError, match="choose one of: float, int2"):
        weight_bits("int9")
