"""Round numbers from names, fields and the sequence (SPEC.md, "Rounds")."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd.errors import CheckpointError
from chunkd.rounds import (
    DATE_OR_TIME,
    DEFAULT_ROUND_REGEX,
    FIRST_ROUND,
    MAX_ROUND,
    choose_round,
    round_from_fields,
    round_from_name,
)

DEFAULT = re.compile(DEFAULT_ROUND_REGEX)


# -- round_from_name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # SPEC.md's list, verbatim
        "model_round_12.pth",
        "client_3_round_12.pth",
        "round-12.pt",
        "r12.pth",
        "epoch12.pth",
        "12_model.pt",
        "model_12.pt",
        "12.pth",
        # variants of the same forms
        "round_12.pth",
        "round12.pth",
        "rnd_12.pt",
        "ep12.pt",
        "epoch_12.pth",
        "checkpoint_epoch_12.pth",
        "model.round12.pt",
        "round_12_final.pth",
        "client_3_r12.pth",
        "client3_12.pth",
        "model-12.pt",
        "round_0012.pth",
        "vgg16_round_12.pth",
    ],
)
def test_default_regex_finds_12(name: str) -> None:
    assert round_from_name(name, DEFAULT) == 12


@pytest.mark.parametrize(
    "name",
    [
        # SPEC.md's list, verbatim
        "client_3_model.pth",
        "checkpoint.pth",
        "FL_global_model.pt",
        "best_model.pth",
        # a client's own id is never a round
        "client_3.pth",
        "client-3.pth",
        "my_client_3.pth",
        "client_12.pt",
        # digits that are part of a word
        "resnet18.pth",
        "model_v2.pth",
        "round12abc.pth",
        "",
    ],
)
def test_default_regex_finds_no_round(name: str) -> None:
    assert round_from_name(name, DEFAULT) is None


def test_round_zero_is_a_round() -> None:
    assert round_from_name("round_0.pth", DEFAULT) == 0
    assert round_from_name("round_000.pth", DEFAULT) == 0


def test_only_the_base_name_is_searched() -> None:
    assert round_from_name("/srv/fl/round_7/model.pth", DEFAULT) is None
    assert round_from_name("/srv/fl/client_3/model_round_5.pth", DEFAULT) == 5


def test_first_match_wins() -> None:
    assert round_from_name("round_3_epoch_9.pth", DEFAULT) == 3


def test_round_must_fit_63_bits() -> None:
    assert round_from_name(f"round_{MAX_ROUND}.pth", DEFAULT) == MAX_ROUND
    assert round_from_name(f"round_{MAX_ROUND + 1}.pth", DEFAULT) is None
    assert round_from_name("round_" + "9" * 5000 + ".pth", DEFAULT) is None
    # leading zeros do not make a small number too big
    assert round_from_name("round_" + "0" * 30 + "7.pth", DEFAULT) == 7


def test_non_ascii_digits_are_not_rounds() -> None:
    # \d matches Arabic-Indic digits; int() would take them, but no FL framework writes them
    assert round_from_name("round_\u0661\u0662.pth", DEFAULT) is None


def test_custom_pattern() -> None:
    pattern = re.compile(r"ckpt-(?P<round>\d+)")
    assert round_from_name("ckpt-41.pt", pattern) == 41
    assert round_from_name("model_round_12.pth", pattern) is None


def test_custom_pattern_with_non_numeric_or_absent_group() -> None:
    assert round_from_name("ckpt-x1.pt", re.compile(r"ckpt-(?P<round>\w+)")) is None
    assert round_from_name("+5.pt", re.compile(r"(?P<round>[+\d]+)")) is None
    assert round_from_name("a.pt", re.compile(r"(?P<round>\d+)|a")) is None


def test_pattern_without_round_group_is_a_bug() -> None:
    with pytest.raises(ValueError, match="round"):
        round_from_name("round_1.pth", re.compile(r"\d+"))


@given(st.text())
def test_round_from_name_never_raises(name: str) -> None:
    result = round_from_name(name, DEFAULT)
    assert result is None or 0 <= result <= MAX_ROUND


@given(
    st.integers(min_value=0, max_value=MAX_ROUND).filter(
        lambda n: DATE_OR_TIME.search(str(n)) is None
    ),
    st.sampled_from(["model_round_{}.pth", "r{}.pth", "epoch{}.pth", "client_9_round_{}.pth"]),
)
def test_round_word_takes_any_number_but_a_date(round_num: int, template: str) -> None:
    assert round_from_name(template.format(round_num), DEFAULT) == round_num


@given(
    st.integers(min_value=0, max_value=999_999),
    st.sampled_from(["{}.pt", "{}_model.pth", "model_{}.pth", "client_9_{}.pth"]),
)
def test_bare_counters_up_to_six_digits(round_num: int, template: str) -> None:
    assert round_from_name(template.format(round_num), DEFAULT) == round_num


@pytest.mark.parametrize("template", ["{}.pt", "model_{}.pth", "{}_model.pth"])
def test_bare_counters_of_seven_digits_or_more_are_not_rounds(template: str) -> None:
    # a longer bare number is a date, a Unix time, a hash or a size, never an FL round
    for number in ("1000000", "12345678", "999999999999"):
        assert round_from_name(template.format(number), DEFAULT) is None


# -- dates and timestamps (issue 10: `model_2024-06-01.pth` replaced round 1) ------------------


@pytest.mark.parametrize(
    "name",
    [
        # SPEC.md's list, verbatim
        "model_2024-06-01.pth",
        "ckpt-20240601.pth",
        "run_1717200000.pt",
        # the same with other separators, times, round words and positions
        "model_2024_06_01.pth",
        "model_2024.06.01.pth",
        "2024-06-01.pth",
        "2024-06-01_model.pth",
        "20240601.pth",
        "model_20240601T123000.pth",
        "ckpt_20240601_1230.pth",
        "model_2024-06-01_12-30-00.pth",
        "model_2024-06.pth",
        "model_2024_06.pth",
        "round_20240601.pth",
        "epoch_1717200000.pt",
        "r1717200000123.pt",
        "ckpt_1717200000123456.pt",
        "snapshot-1717200000.pth",
    ],
)
def test_dates_and_timestamps_are_never_rounds(name: str) -> None:
    assert round_from_name(name, DEFAULT) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2024-06-01_round_3.pth", 3),
        ("model_round_3_2024-06-01.pth", 3),
        ("model_20240601_round_7.pth", 7),
        ("ckpt_20240601_12.pth", 12),  # a counter after a date (no time is 2 digits)
    ],
)
def test_a_round_beside_a_date_is_still_found(name: str, expected: int) -> None:
    assert round_from_name(name, DEFAULT) == expected


def test_date_rule_applies_to_custom_patterns_too() -> None:
    pattern = re.compile(r"ckpt-(?P<round>\d+)")
    assert round_from_name("ckpt-20240601.pt", pattern) is None
    assert round_from_name("ckpt-41.pt", pattern) == 41


@pytest.mark.parametrize(
    "text", ["20240601", "2024-06-01", "2024_06_01", "1717200000", "1717200000123", "2024-06"]
)
def test_date_or_time_matches(text: str) -> None:
    assert DATE_OR_TIME.fullmatch(text) is not None


@pytest.mark.parametrize("text", ["20241301", "20240632", "123", "240601", "2024", "0717200000"])
def test_date_or_time_leaves_other_numbers(text: str) -> None:
    assert DATE_OR_TIME.search(text) is None


# -- a corpus of real-world checkpoint names ------------------------------------------------------

#: Names that FL frameworks, trainers and model hubs write, with the round chunkd must take from
#: each (None: no round in the name; the checkpoint's fields or the sequence decide). The README's
#: "Rounds" section states the same rules.
REAL_WORLD_NAMES: list[tuple[str, int | None]] = [
    # FederatedScope
    ("client_1_round_0.pth", 0),
    ("client_12_round_30.pth", 30),
    ("model.pt", None),
    # Flower examples
    ("model_round_3.pth", 3),
    ("round-7-weights.pt", 7),
    # NVFlare
    ("FL_global_model.pt", None),
    ("best_FL_global_model.pt", None),
    # PyTorch Lightning
    ("epoch=3-step=1200.ckpt", 3),
    ("last.ckpt", None),
    # Hugging Face Trainer and hub files
    ("checkpoint-500", 500),
    ("checkpoint-500.pt", 500),
    ("pytorch_model.bin", None),
    ("pytorch_model-00001-of-00002.bin", None),
    ("model_00002_of_00004.pt", None),
    # architectures, precisions, versions: digits inside words
    ("t5-small.pt", None),
    ("gpt2-xl.pt", None),
    ("gpt-2.pt", None),
    ("llama-2-7b.pt", None),
    ("resnet50.pth", None),
    ("resnet-50.pth", None),
    ("vgg16_bn.pth", None),
    ("model_bf16.pt", None),
    ("model_fp16.pt", None),
    ("model_v2.pth", None),
    ("v2.pt", None),
    ("efficientnet-b0.pth", None),
    # hashes
    ("model_3f2a9c1d.pth", None),
    ("e3b0c44298fc1c14.pt", None),
    ("model-e3b0c442.pt", None),
    ("resnet18-f37072fd.pth", None),  # torchvision's weight files
    # participants and shards are not rounds
    ("client_3.pth", None),
    ("site_2.pth", None),
    ("node_1.pt", None),
    ("rank_0.pt", None),
    ("model_rank_1.pt", None),
    ("worker_4.pth", None),
    ("party_1.pt", None),
    # common training scripts
    ("checkpoint_epoch_12.pth", 12),
    ("model_epoch_3_step_1200.pt", 3),
    ("ep_3.pt", 3),
    ("Round_7.PTH", 7),
    ("model_final.pth", None),
    ("best_model.pth", None),
    ("model-12.pt", 12),
    ("ckpt-12.pt", 12),
    # dates and timestamps
    ("model_2024-06-01.pth", None),
    ("ckpt-20240601.pth", None),
    ("run_1717200000.pt", None),
    # ambiguous, decided (README, "Rounds"): a lone year-sized counter is a counter
    ("model_2024.pth", 2024),
]


@pytest.mark.parametrize(("name", "expected"), REAL_WORLD_NAMES)
def test_real_world_names(name: str, expected: int | None) -> None:
    assert round_from_name(name, DEFAULT) == expected


# -- round_from_fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"cur_round": 4, "model": {}}, 4),
        ({"round": 5}, 5),
        ({"server_round": 6}, 6),
        ({"epoch": 7}, 7),
        (OrderedDict([("epoch", 1), ("cur_round", 2)]), 2),  # key order, not insertion order
        ({"round": 3, "server_round": 9, "epoch": 1}, 3),
        ({"cur_round": 0}, 0),
    ],
)
def test_round_from_fields(top: object, expected: int) -> None:
    assert round_from_fields(top) == expected


@pytest.mark.parametrize(
    "top",
    [
        {"model": {}},
        {"cur_round": True},
        {"cur_round": -1},
        {"cur_round": 3.0},
        {"cur_round": "3"},
        {"cur_round": None},
        {"cur_round": MAX_ROUND + 1},
        {"Round": 3},
        [("cur_round", 3)],
        None,
        3,
        "cur_round",
    ],
)
def test_round_from_fields_none(top: object) -> None:
    assert round_from_fields(top) is None


def test_invalid_field_falls_through_to_the_next() -> None:
    assert round_from_fields({"cur_round": None, "epoch": 8}) == 8
    assert round_from_fields({"round": False, "server_round": 2}) == 2


def test_field_result_is_a_plain_int() -> None:
    class Number(int):
        pass

    result = round_from_fields({"round": Number(3)})
    assert result == 3
    assert type(result) is int


# -- choose_round --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name_round", "field_round", "highest", "expected"),
    [
        (12, 4, 30, 12),  # the name wins
        (0, 4, 30, 0),  # round 0 from the name is still the name's
        (None, 4, 30, 4),  # then the field
        (None, 0, 30, 0),
        (None, None, 30, 31),  # then the sequence
        (None, None, 0, 1),
        (None, None, None, FIRST_ROUND),  # nothing stored yet
    ],
)
def test_choose_round(
    name_round: int | None, field_round: int | None, highest: int | None, expected: int
) -> None:
    assert choose_round(name_round, field_round, highest) == expected


def test_first_round_is_one() -> None:
    assert FIRST_ROUND == 1


def test_sequence_cannot_pass_max_round() -> None:
    with pytest.raises(CheckpointError, match=str(MAX_ROUND)):
        choose_round(None, None, MAX_ROUND)
    assert choose_round(None, None, MAX_ROUND - 1) == MAX_ROUND
    assert choose_round(MAX_ROUND, None, MAX_ROUND) == MAX_ROUND
