"""``PARAMETER speculative`` / ``num_speculative_tokens``: checked when the Modelfile is
parsed, applied to the model's engine when it loads, never sent as request options."""

from __future__ import annotations

import pytest

from heron.store.modelfile import ModelfileError, parse_modelfile


def test_speculative_parameters_parse() -> None:
    mf = parse_modelfile(
        "FROM smollm2\nPARAMETER speculative ngram\nPARAMETER num_speculative_tokens 3\n"
    )
    assert mf.parameter_dict() == {"speculative": "ngram", "num_speculative_tokens": 3}
    mf = parse_modelfile("FROM smollm2\nPARAMETER speculative draft:tiny-draft\n")
    assert mf.parameter_dict() == {"speculative": "draft:tiny-draft"}


@pytest.mark.parametrize("value", ["eagle", "draft", "ngram:x"])
def test_a_bad_speculative_method_names_the_line(value: str) -> None:
    with pytest.raises(ModelfileError, match=r"line 2.*ngram, suffix, draft:MODEL or none"):
        parse_modelfile(f"FROM smollm2\nPARAMETER speculative {value}\n")


def test_num_speculative_tokens_must_be_an_integer() -> None:
    with pytest.raises(ModelfileError, match="num_speculative_tokens"):
        parse_modelfile("FROM smollm2\nPARAMETER num_speculative_tokens many\n")
