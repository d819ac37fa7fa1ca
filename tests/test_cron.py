"""Cron and Quartz expressions: parsing, refusals [E2012], next fire times across DST, descriptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from courier_site.errors import CourierError
from jobs.cron import (
    CronExpression,
    InvalidCronExpression,
    InvalidTimeZone,
    describe,
    next_fire_time,
    next_fire_times,
    parse,
    validate_time_zone,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def fires(expression: str, after: datetime, *, count: int = 5, tz: str | None = None) -> list[datetime]:
    return next_fire_times(expression, after, tz=tz, count=count)


def berlin_wall_clock(instants: list[datetime]) -> list[str]:
    return [instant.astimezone(BERLIN).strftime("%m-%d %H:%M %z") for instant in instants]


# Five-field cron


def test_five_field_expression_keeps_its_source_and_is_cron_syntax() -> None:
    cron = parse("  30 2 * * 1-5 ")

    assert cron == CronExpression(source="30 2 * * 1-5", syntax="cron", normalized="30 2 * * 1-5")


def test_month_and_day_names_are_normalized_to_numbers() -> None:
    assert parse("0 9 * jan-Mar MON-FRI").normalized == "0 9 * 1-3 1-5"


def test_five_field_fire_times_are_utc_and_strictly_after_the_given_instant() -> None:
    times = fires("*/15 * * * *", utc(2025, 1, 1, 10, 0), count=4)

    assert times == [utc(2025, 1, 1, 10, 15), utc(2025, 1, 1, 10, 30), utc(2025, 1, 1, 10, 45), utc(2025, 1, 1, 11, 0)]
    assert all(time.tzinfo is UTC for time in times)


def test_after_given_in_another_offset_is_taken_as_the_same_instant() -> None:
    after = datetime(2025, 1, 1, 11, 0, tzinfo=BERLIN)  # 10:00 UTC

    assert next_fire_time("0 * * * *", after) == utc(2025, 1, 1, 11, 0)


def test_five_field_cron_fires_on_either_day_of_month_or_day_of_week() -> None:
    # Standard cron: with both day fields set, a day matching either one fires.
    times = fires("0 0 13 * 5", utc(2025, 6, 1), count=3)

    assert times == [utc(2025, 6, 6), utc(2025, 6, 13), utc(2025, 6, 20)]


def test_seven_means_sunday_in_five_field_cron() -> None:
    times = fires("0 9 * * 7", utc(2025, 1, 1), count=3)

    assert [time.strftime("%A") for time in times] == ["Sunday"] * 3


def test_friday_to_seven_covers_friday_saturday_and_sunday() -> None:
    times = fires("0 9 * * 5-7", utc(2025, 1, 1), count=4)

    assert [time.strftime("%a %d") for time in times] == ["Fri 03", "Sat 04", "Sun 05", "Fri 10"]


def test_range_with_equal_ends_is_that_single_value() -> None:
    # croniter on its own reads "9-9" as every hour.
    assert fires("0 9-9 * * *", utc(2025, 1, 1), count=2) == [utc(2025, 1, 1, 9), utc(2025, 1, 2, 9)]


@pytest.mark.parametrize(
    ("macro", "normalized", "first_fire"),
    [
        ("@hourly", "0 * * * *", utc(2025, 1, 1, 11)),
        ("@daily", "0 0 * * *", utc(2025, 1, 2)),
        ("@midnight", "0 0 * * *", utc(2025, 1, 2)),
        ("@weekly", "0 0 * * 0", utc(2025, 1, 5)),
        ("@monthly", "0 0 1 * *", utc(2025, 2, 1)),
        ("@yearly", "0 0 1 1 *", utc(2026, 1, 1)),
        ("@ANNUALLY", "0 0 1 1 *", utc(2026, 1, 1)),
    ],
)
def test_macros_expand_to_their_five_field_schedule(macro: str, normalized: str, first_fire: datetime) -> None:
    cron = parse(macro)

    assert (cron.source, cron.syntax, cron.normalized) == (macro, "cron", normalized)
    assert next_fire_time(cron, utc(2025, 1, 1, 10, 30)) == first_fire


# Quartz


def test_six_fields_are_quartz_with_seconds_first() -> None:
    cron = parse("*/15 * * * * ?")

    assert (cron.syntax, cron.normalized) == ("quartz", "*/15 * * * * *")


def test_quartz_seconds_field_fires_at_quarter_minutes() -> None:
    times = fires("*/15 * * * * ?", utc(2025, 1, 1, 11, 59, 59), count=5)

    assert [time.strftime("%H:%M:%S") for time in times] == ["12:00:00", "12:00:15", "12:00:30", "12:00:45", "12:01:00"]


def test_quartz_year_field_limits_fire_times_to_those_years() -> None:
    times = fires("0 0 12 1 1 ? 2027-2028", utc(2025, 6, 1), count=5)

    assert times == [utc(2027, 1, 1, 12), utc(2028, 1, 1, 12)]


def test_schedule_whose_years_are_over_has_no_next_fire_time() -> None:
    assert parse("0 0 0 1 1 ? 2020").syntax == "quartz"
    assert next_fire_time("0 0 0 1 1 ? 2020", utc(2025, 1, 1)) is None
    assert fires("0 0 0 1 1 ? 2020", utc(2025, 1, 1)) == []


def test_question_mark_in_day_of_week_leaves_the_day_of_month_in_charge() -> None:
    assert fires("0 0 9 15 * ?", utc(2025, 1, 1), count=2) == [utc(2025, 1, 15, 9), utc(2025, 2, 15, 9)]


def test_question_mark_with_star_fires_every_day() -> None:
    assert fires("0 30 6 * * ?", utc(2025, 1, 1), count=2) == [utc(2025, 1, 1, 6, 30), utc(2025, 1, 2, 6, 30)]


def test_quartz_star_day_of_month_with_a_weekday_fires_on_that_weekday() -> None:
    # Lenient: Spring-style six-field expressions leave out '?', and with '*' the meaning is plain.
    times = fires("0 0 9 * * MON", utc(2025, 1, 1), count=3)

    assert times == [utc(2025, 1, 6, 9), utc(2025, 1, 13, 9), utc(2025, 1, 20, 9)]


def test_quartz_six_hash_three_is_the_third_friday() -> None:
    cron = parse("0 0 12 ? * 6#3")

    assert cron.normalized == "0 0 12 * * 5#3"
    assert fires(cron, utc(2025, 1, 1), count=3) == [utc(2025, 1, 17, 12), utc(2025, 2, 21, 12), utc(2025, 3, 21, 12)]


def test_quartz_two_to_six_is_monday_to_friday() -> None:
    times = fires("0 0 9 ? * 2-6", utc(2025, 1, 3), count=5)  # a Friday

    assert [time.strftime("%a") for time in times] == ["Fri", "Mon", "Tue", "Wed", "Thu"]


def test_quartz_day_names_give_the_same_schedule_as_quartz_numbers() -> None:
    assert parse("0 0 9 ? * MON-FRI").normalized == parse("0 0 9 ? * 2-6").normalized
    assert fires("0 0 9 ? * MON-FRI", utc(2025, 1, 3), count=10) == fires("0 0 9 ? * 2-6", utc(2025, 1, 3), count=10)


@pytest.mark.parametrize(("day", "weekday"), [("1", "Sunday"), ("2", "Monday"), ("7", "Saturday"), ("L", "Saturday")])
def test_quartz_counts_days_of_week_from_one_for_sunday(day: str, weekday: str) -> None:
    times = fires(f"0 0 9 ? * {day}", utc(2025, 1, 1), count=2)

    assert [time.strftime("%A") for time in times] == [weekday, weekday]


def test_quartz_weekday_list_and_step_are_translated() -> None:
    # 1,4 = Sunday and Wednesday; 2/2 = Monday, Wednesday, Friday.
    assert {time.strftime("%a") for time in fires("0 0 9 ? * 1,4", utc(2025, 1, 1), count=6)} == {"Sun", "Wed"}
    assert {time.strftime("%a") for time in fires("0 0 9 ? * 2/2", utc(2025, 1, 1), count=6)} == {"Mon", "Wed", "Fri"}


def test_quartz_six_l_is_the_last_friday_of_the_month() -> None:
    times = fires("0 0 10 ? * 6L", utc(2025, 1, 1), count=3)

    assert times == [utc(2025, 1, 31, 10), utc(2025, 2, 28, 10), utc(2025, 3, 28, 10)]


def test_l_in_day_of_month_is_the_last_day_including_leap_february() -> None:
    times = fires("0 0 0 L * ?", utc(2024, 1, 1), count=3)

    assert times == [utc(2024, 1, 31), utc(2024, 2, 29), utc(2024, 3, 31)]


def test_l_minus_three_is_three_days_before_the_last_day() -> None:
    times = fires("0 0 0 L-3 * ?", utc(2025, 1, 1), count=3)

    assert times == [utc(2025, 1, 28), utc(2025, 2, 25), utc(2025, 3, 28)]


def test_lw_is_the_last_weekday_of_the_month() -> None:
    # May 31 2025 is a Saturday and August 31 a Sunday: both step back to Friday.
    times = fires("0 0 0 LW * ?", utc(2025, 5, 1), count=4)

    assert times == [utc(2025, 5, 30), utc(2025, 6, 30), utc(2025, 7, 31), utc(2025, 8, 29)]


def test_w_is_the_nearest_weekday_without_leaving_the_month() -> None:
    # February 15 2025 is a Saturday (-> Friday 14), June 15 a Sunday (-> Monday 16);
    # February 1 is a Saturday and 1W stays in February (-> Monday 3).
    assert fires("0 0 9 15W * ?", utc(2025, 2, 1), count=1) == [utc(2025, 2, 14, 9)]
    assert fires("0 0 9 15W * ?", utc(2025, 6, 1), count=1) == [utc(2025, 6, 16, 9)]
    assert fires("0 0 9 1W * ?", utc(2025, 1, 2), count=1) == [utc(2025, 2, 3, 9)]


# Refusals


def test_refusal_message_names_field_value_and_range_with_a_single_code_prefix() -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        parse("61 * * * *")

    assert str(caught.value) == "[E2012] cron expression '61 * * * *': minute field value 61 is out of range 0-59"
    assert caught.value.code == "E2012"
    assert isinstance(caught.value, CourierError)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "cron expression is empty"),
        ("   ", "cron expression is empty"),
        ("* * *", "has 3 fields; expected 5"),
        ("0 0 0 1 1 ? 2027 extra", "has 8 fields; expected 5"),
        ("0 24 * * *", "hour field value 24 is out of range 0-23"),
        ("0 0 32 * *", "day-of-month field value 32 is out of range 1-31"),
        ("0 0 0 * 13 *", "month field value 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field value 8 is out of range 0-7"),
        ("0 0 12 ? * 0", "day-of-week field value 0 is out of range 1-7 (Quartz counts 1 = Sunday"),
        ("60 0 12 ? * *", "second field value 60 is out of range 0-59"),
        ("0 0 12 1 1 ? 1969", "year field value 1969 is out of range 1970-2099"),
        ("0 0 9 15 * MON", "day-of-month '15' and day-of-week 'MON' are both set"),
        ("0 0 9 ? * ?", "day-of-month and day-of-week are both '?'"),
        ("abc * * * *", "minute field value 'abc' is not a number"),
        ("H * * * *", "minute field value 'H' is not a number"),
        ("0 0 * Foo *", "month field value 'Foo' is neither a number nor a month name"),
        ("0 0 * * FUN", "day-of-week field value 'FUN' is neither a number nor a day name"),
        ("*/0 * * * *", "minute field step 0 is out of range 1-60"),
        ("*/x * * * *", "minute field step 'x' is not a number"),
        ("0 22-2 * * *", "hour field range '22-2' runs backwards"),
        ("0 0 12 ? * 6#6", "day-of-week field '6#6': the occurrence after '#' must be 1 to 5"),
        ("0 0 9 L-31 * ?", "day-of-month field 'L-31': the offset after 'L-' must be a number of days"),
        ("0 0 9 15W,20 * ?", "day-of-month field '15W,20': '15W' must stand alone"),
        ("? * * * *", "minute field cannot be '?'"),
        ("1,,2 * * * *", "minute field '1,,2' has an empty item"),
        ("0 0 30 2 *", "day-of-month field value 30 never occurs in the months selected (February)"),
        ("@reboot", "'@reboot' is not a known shortcut"),
    ],
)
def test_invalid_expression_is_refused_naming_the_problem(expression: str, problem: str) -> None:
    with pytest.raises(InvalidCronExpression) as caught:
        parse(expression)

    message = str(caught.value)
    assert message.startswith("[E2012] ")
    assert not message.startswith("[E2012] [E2012]")
    assert problem in message


def test_fire_times_of_an_invalid_expression_are_refused() -> None:
    with pytest.raises(InvalidCronExpression, match=r"minute field value 99"):
        next_fire_times("99 * * * *", utc(2025, 1, 1))


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_times("0 * * * *", datetime(2025, 1, 1))


# Time zones


def test_expression_is_read_in_the_wall_clock_of_the_time_zone() -> None:
    # 09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
    assert next_fire_time("0 9 * * *", utc(2025, 1, 15), tz="America/New_York") == utc(2025, 1, 15, 14)
    assert next_fire_time("0 9 * * *", utc(2025, 7, 15), tz="America/New_York") == utc(2025, 7, 15, 13)


def test_quartz_expression_is_read_in_the_time_zone_too() -> None:
    assert next_fire_time("0 0 12 ? * 6#3", utc(2025, 1, 1), tz="Asia/Tokyo") == utc(2025, 1, 17, 3)


def test_time_zone_name_comes_back_as_the_tz_database_spells_it() -> None:
    assert validate_time_zone(" europe/berlin ") == "Europe/Berlin"
    assert validate_time_zone("UTC") == "UTC"


def test_unknown_time_zone_is_refused_naming_the_zone() -> None:
    with pytest.raises(InvalidTimeZone) as caught:
        next_fire_times("0 * * * *", utc(2025, 1, 1), tz="Mars/Olympus_Mons")

    assert str(caught.value).startswith("[E2012] time zone 'Mars/Olympus_Mons' is not an IANA time zone name")
    assert isinstance(caught.value, InvalidCronExpression)


@pytest.mark.parametrize("name", ["", "../etc/passwd", "Europe/"])
def test_malformed_time_zone_is_refused(name: str) -> None:
    with pytest.raises(InvalidTimeZone, match=r"\[E2012\] time zone"):
        validate_time_zone(name)


# Daylight saving time (Europe/Berlin, 2025: clocks go 02:00 -> 03:00 on March 30, 03:00 -> 02:00 on October 26)


def test_daily_time_in_the_spring_gap_fires_once_an_hour_later() -> None:
    times = fires("30 2 * * *", utc(2025, 3, 29, 12), tz="Europe/Berlin", count=3)

    # 02:30 does not exist on March 30; it fires at 03:30 CEST, exactly 24 hours after the day before.
    assert times == [utc(2025, 3, 30, 1, 30), utc(2025, 3, 31, 0, 30), utc(2025, 4, 1, 0, 30)]
    assert berlin_wall_clock(times) == ["03-30 03:30 +0200", "03-31 02:30 +0200", "04-01 02:30 +0200"]


def test_daily_time_in_the_spring_gap_is_still_due_just_after_the_gap() -> None:
    # Asked at 03:10 CEST, the 02:30 run (moved to 03:30) has not happened yet.
    assert next_fire_time("30 2 * * *", utc(2025, 3, 30, 1, 10), tz="Europe/Berlin") == utc(2025, 3, 30, 1, 30)


def test_daily_time_in_the_repeated_autumn_hour_fires_once() -> None:
    times = fires("30 2 * * *", utc(2025, 10, 25, 12), tz="Europe/Berlin", count=3)

    assert times == [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30), utc(2025, 10, 28, 1, 30)]
    assert berlin_wall_clock(times) == ["10-26 02:30 +0200", "10-27 02:30 +0100", "10-28 02:30 +0100"]


def test_daily_time_does_not_fire_again_in_the_second_pass_of_the_repeated_hour() -> None:
    # 02:45 CEST, after the 02:30 CEST run: the next run is the following day, not 02:30 CET.
    assert next_fire_time("30 2 * * *", utc(2025, 10, 26, 0, 45), tz="Europe/Berlin") == utc(2025, 10, 27, 1, 30)


def test_hourly_schedule_fires_every_real_hour_across_the_autumn_change() -> None:
    times = fires("0 * * * *", utc(2025, 10, 25, 22, 30), tz="Europe/Berlin", count=5)

    assert times == [
        utc(2025, 10, 25, 23),
        utc(2025, 10, 26, 0),
        utc(2025, 10, 26, 1),
        utc(2025, 10, 26, 2),
        utc(2025, 10, 26, 3),
    ]
    assert berlin_wall_clock(times) == [
        "10-26 01:00 +0200",
        "10-26 02:00 +0200",
        "10-26 02:00 +0100",
        "10-26 03:00 +0100",
        "10-26 04:00 +0100",
    ]


def test_hourly_schedule_fires_every_real_hour_across_the_spring_change() -> None:
    times = fires("0 * * * *", utc(2025, 3, 29, 23, 30), tz="Europe/Berlin", count=3)

    assert times == [utc(2025, 3, 30, 0), utc(2025, 3, 30, 1), utc(2025, 3, 30, 2)]
    assert berlin_wall_clock(times) == ["03-30 01:00 +0100", "03-30 03:00 +0200", "03-30 04:00 +0200"]


def test_hourly_schedule_asked_inside_the_first_pass_still_fires_in_the_second() -> None:
    # 02:10 CEST: the next hour mark is 02:00 CET, 50 minutes later.
    assert next_fire_time("0 * * * *", utc(2025, 10, 26, 0, 10), tz="Europe/Berlin") == utc(2025, 10, 26, 1)


@pytest.mark.parametrize(
    ("expression", "start"),
    [
        ("0 * * * *", utc(2025, 10, 25, 21)),
        ("*/20 * * * *", utc(2025, 10, 25, 23, 50)),
        ("30 2 * * *", utc(2025, 10, 24)),
        ("0 * * * *", utc(2025, 3, 29, 22)),
        ("0,15,30,45 2-3 * * *", utc(2025, 3, 29, 23)),
        ("*/20 * * * * ?", utc(2025, 10, 26, 0, 58)),
    ],
)
def test_stepping_one_fire_time_at_a_time_matches_the_list_across_dst(expression: str, start: datetime) -> None:
    # The beat tick advances with next_fire_time from the instant just fired; it must walk the same instants.
    listed = fires(expression, start, tz="Europe/Berlin", count=12)
    stepped = [start]
    for _ in range(12):
        following = next_fire_time(expression, stepped[-1], tz="Europe/Berlin")
        assert following is not None
        stepped.append(following)

    assert stepped[1:] == listed
    assert all(later > earlier for earlier, later in pairwise(listed))


def test_times_in_the_spring_gap_that_land_on_existing_times_fire_once() -> None:
    times = fires("0,15,30,45 2-3 * * *", utc(2025, 3, 29, 23), tz="Europe/Berlin", count=5)

    assert berlin_wall_clock(times) == [
        "03-30 03:00 +0200",
        "03-30 03:15 +0200",
        "03-30 03:30 +0200",
        "03-30 03:45 +0200",
        "03-31 02:00 +0200",
    ]


def test_spring_gap_in_new_york_moves_two_thirty_to_three_thirty() -> None:
    # 2025-03-09: clocks go 02:00 EST -> 03:00 EDT.
    assert next_fire_time("30 2 * * *", utc(2025, 3, 9), tz="America/New_York") == utc(2025, 3, 9, 7, 30)


def test_whole_schedule_keeps_its_spacing_in_utc_without_a_time_zone() -> None:
    times = fires("30 2 * * *", utc(2025, 3, 29), count=3)

    assert [later - earlier for earlier, later in pairwise(times)] == [timedelta(days=1)] * 2


# Descriptions


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 0 12 ? * 6#3", ["12:00 PM", "third Friday"]),
        ("0 0 9 ? * 2-6", ["09:00 AM", "Monday through Friday"]),
        ("0 0 9 ? * MON-FRI", ["Monday through Friday"]),
        ("0 9 * * 1-5", ["09:00 AM", "Monday through Friday"]),
        ("0 0 10 ? * 1", ["Sunday"]),
        ("0 10 * * 0", ["Sunday"]),
        ("0 10 * * 7", ["Sunday"]),
        ("0 0 10 ? * L", ["Saturday"]),
        ("0 0 10 ? * 6L", ["last Friday"]),
        ("*/15 * * * * ?", ["Every 15 seconds"]),
        ("0 0 12 1 1 ? 2027", ["12:00 PM", "January", "2027"]),
        ("0 0 0 LW * ?", ["last weekday of the month"]),
        ("@daily", ["12:00 AM"]),
        ("*/5 * * * *", ["Every 5 minutes"]),
    ],
)
def test_description_reads_the_schedule_in_english(expression: str, expected: list[str]) -> None:
    text = describe(expression)

    for part in expected:
        assert part in text


def test_quartz_weekday_numbers_are_not_described_as_the_next_day() -> None:
    # Quartz 6 is Friday; read as cron numbering it would be Saturday.
    text = describe("0 0 12 ? * 6")

    assert "Friday" in text
    assert "Saturday" not in text


def test_describe_accepts_a_parsed_expression() -> None:
    assert describe(parse("0 0 12 ? * 6#3")) == describe("0 0 12 ? * 6#3")


def test_describe_refuses_an_invalid_expression() -> None:
    with pytest.raises(InvalidCronExpression, match=r"\[E2012\]"):
        describe("0 0 12 ? *")
