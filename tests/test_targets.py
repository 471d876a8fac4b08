"""The targets file: streaming, validation with line numbers, skipping, comments."""

from __future__ import annotations

import io

import pytest

from crawler.errors import TargetsError
from crawler.models import Target
from crawler.targets import MAX_REPORTED, TargetsReader, check_pair


def read(text: str, *, skip_invalid: bool = False) -> tuple[list[Target], TargetsReader]:
    reader = TargetsReader(io.StringIO(text), "targets.csv", skip_invalid=skip_invalid)
    return list(reader), reader


def test_reads_pairs_trimming_values_and_ignoring_other_columns() -> None:
    targets, _ = read("name,image_id,region_id\nweb, img-abc ,cn-north-1 \nx,img-d,cn-east-2\n")
    assert targets == [Target("cn-north-1", "img-abc"), Target("cn-east-2", "img-d")]


def test_skips_blank_lines_and_comments_before_and_after_the_header() -> None:
    text = "# exported by cron\n\nregion_id,image_id\n\n# a comment\ncn-north-1,img-a\n  \n"
    targets, reader = read(text)
    assert targets == [Target("cn-north-1", "img-a")]
    assert reader.invalid_count == 0


def test_duplicates_are_passed_on_for_the_store_to_fold() -> None:
    targets, _ = read("region_id,image_id\ncn-north-1,img-a\ncn-north-1,img-a\n")
    assert targets == [Target("cn-north-1", "img-a")] * 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("CN-north-1,img-a", "region_id 'CN-north-1'"),
        ("cn-north,img-a", "region_id 'cn-north'"),
        ("cn-north-1,IMG-A", "image_id 'IMG-A'"),
        ("cn-north-1,img-", "image_id 'img-'"),
        ("cn-north-1,img-a/../x", "image_id 'img-a/../x'"),
        ("cn-north-1,img-" + "a" * 65, "image_id"),
        ("cn-north-1", "expected at least 2 columns"),
    ],
)
def test_invalid_lines_are_named_by_line_number(line: str, reason: str) -> None:
    with pytest.raises(TargetsError) as caught:
        read(f"region_id,image_id\ncn-north-1,img-ok\n{line}\n")
    message = str(caught.value)
    assert "targets.csv" in message
    assert "line 3:" in message
    assert reason in message


def test_every_bad_line_is_listed_and_good_ones_are_all_read_first() -> None:
    reader = TargetsReader(
        io.StringIO("region_id,image_id\nbad,img-a\ncn-north-1,img-b\ncn-north-1,bad\n"), "t.csv"
    )
    seen: list[Target] = []
    with pytest.raises(TargetsError) as caught:
        seen.extend(reader)
    assert seen == [Target("cn-north-1", "img-b")]
    assert "line 2:" in str(caught.value)
    assert "line 4:" in str(caught.value)


def test_skip_invalid_reports_but_does_not_raise() -> None:
    targets, reader = read("region_id,image_id\nbad,img-a\ncn-north-1,img-b\n", skip_invalid=True)
    assert targets == [Target("cn-north-1", "img-b")]
    assert [bad.line_number for bad in reader.invalid] == [2]
    assert "line 2" in reader.describe_invalid()


def test_only_the_first_bad_lines_are_kept_in_memory() -> None:
    lines = "".join(f"bad-{n},img-a\n" for n in range(MAX_REPORTED + 50))
    _, reader = read("region_id,image_id\n" + lines, skip_invalid=True)
    assert len(reader.invalid) == MAX_REPORTED
    assert reader.invalid_count == MAX_REPORTED + 50
    assert "and 50 more" in reader.describe_invalid()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no header row"),
        ("# only a comment\n", "no header row"),
        ("region,image\ncn-north-1,img-a\n", "missing: region_id, image_id"),
        ("region_id\ncn-north-1\n", "missing: image_id"),
    ],
)
def test_a_bad_header_is_an_error_naming_the_file(text: str, expected: str) -> None:
    with pytest.raises(TargetsError, match=expected) as caught:
        read(text)
    assert "targets.csv" in str(caught.value)


def test_a_byte_order_mark_and_header_case_are_tolerated() -> None:
    targets, _ = read("\ufeffRegion_ID,Image_ID\ncn-south-1,img-z9\n")
    assert targets == [Target("cn-south-1", "img-z9")]


def test_quoted_fields_keep_line_numbers_right() -> None:
    with pytest.raises(TargetsError, match="line 4:"):
        read('region_id,image_id,note\ncn-north-1,img-a,"two\nlines"\nbad,img-b,x\n')


def test_check_pair_accepts_the_documented_shapes() -> None:
    assert check_pair("cn-southwest-1", "img-m5s0ed7ldz") is None
    assert check_pair("cn-north-1", "img-" + "a" * 64) is None


def test_decoded_lines_drop_a_bom_and_name_line_byte_and_offset_of_a_bad_byte() -> None:
    import io as io_module

    from crawler.targets import decoded_lines

    data = "\ufeffregion_id,image_id\n".encode() + b"cn-north-1,img-a\n" + b"x,\xd6\xd0\n"
    lines = decoded_lines(io_module.BytesIO(data), "t.csv")
    assert next(lines) == "region_id,image_id\n"
    assert next(lines) == "cn-north-1,img-a\n"
    with pytest.raises(TargetsError) as caught:
        next(lines)
    offset = data.index(b"\xd6")
    assert str(caught.value).startswith(
        f"t.csv: line 3 is not UTF-8: byte 0xd6 at offset {offset} of the file (byte 3 of the line)"
    )
