"""Cron and Quartz schedule expressions: validation [E2012], next fire times across DST, English descriptions."""

from __future__ import annotations

import bisect
import calendar
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import Enum
from functools import cache
from typing import Literal, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cron_descriptor import ExpressionDescriptor, Options
from croniter import CroniterBadDateError, CroniterError, croniter

from courier_site.errors import CourierError

__all__ = [
    "CronExpression",
    "InvalidCronExpression",
    "InvalidTimeZone",
    "describe",
    "next_fire_time",
    "next_fire_times",
    "parse",
    "validate_time_zone",
]


class InvalidCronExpression(CourierError):
    """A schedule expression that cannot be parsed, or names a value outside its field."""

    code = "E2012"


class InvalidTimeZone(InvalidCronExpression):
    """A schedule's time zone is not an IANA name; same code as a bad expression, since both refuse the schedule."""


Syntax = Literal["cron", "quartz"]

# croniter understands these too, but expanding them here gives one code path for
# validation, evaluation and description.
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_CRON_WEEKDAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_QUARTZ_WEEKDAY_NAMES = {name: number + 1 for name, number in _CRON_WEEKDAY_NAMES.items()}


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None
    names_hint: str = ""
    range_note: str = ""
    # Highest value `start/step` counts up to; differs from `high` only where 7 repeats Sunday.
    step_high: int | None = None


_SECOND = _FieldSpec("second", 0, 59)
_MINUTE = _FieldSpec("minute", 0, 59)
_HOUR = _FieldSpec("hour", 0, 23)
_DAY_OF_MONTH = _FieldSpec("day-of-month", 1, 31)
_MONTH = _FieldSpec("month", 1, 12, _MONTH_NAMES, "a month name (JAN-DEC)")
_CRON_DAY_OF_WEEK = _FieldSpec(
    "day-of-week", 0, 7, _CRON_WEEKDAY_NAMES, "a day name (SUN-SAT)", " (0 or 7 = Sunday)", step_high=6
)
_QUARTZ_DAY_OF_WEEK = _FieldSpec(
    "day-of-week", 1, 7, _QUARTZ_WEEKDAY_NAMES, "a day name (SUN-SAT)", " (Quartz counts 1 = Sunday to 7 = Saturday)"
)
_YEAR = _FieldSpec("year", 1970, 2099)

_CRON_FIELDS = (_MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _CRON_DAY_OF_WEEK)
_QUARTZ_FIELDS = (_SECOND, _MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _QUARTZ_DAY_OF_WEEK, _YEAR)

# Days in each month, February counted as 29 so that leap days stay valid.
_LONGEST_MONTH = {month: 29 if month == 2 else calendar.monthrange(2001, month)[1] for month in range(1, 13)}


class _Kind(Enum):
    ALL = "*"  # `*` or `*/step`
    ANY = "?"
    RANGE = "range"  # `a`, `a-b`, `a-b/step`, `a/step`
    LAST_DAY = "L"
    LAST_DAY_OFFSET = "L-n"
    LAST_WEEKDAY = "LW"
    NEAREST_WEEKDAY = "nW"
    LAST_OF_WEEKDAY = "nL"
    NTH_OF_WEEKDAY = "n#k"


@dataclass(frozen=True)
class _Item:
    kind: _Kind
    start: int = 0
    end: int = 0
    step: int = 1
    number: int = 0  # the offset of L-n, the occurrence k of n#k


@dataclass(frozen=True)
class _Field:
    spec: _FieldSpec
    text: str
    items: tuple[_Item, ...]

    @property
    def is_any(self) -> bool:
        return self.items == (_Item(_Kind.ANY),)

    @property
    def is_every(self) -> bool:
        """`*` or `?`: the field does not narrow the schedule."""
        return self.is_any or self.items == (_Item(_Kind.ALL),)

    def values(self) -> set[int] | None:
        """The plain values the field selects, or None when it holds L, W, # or ?."""
        values: set[int] = set()
        for item in self.items:
            if item.kind is _Kind.ALL:
                values.update(range(self.spec.low, (self.spec.step_high or self.spec.high) + 1, item.step))
            elif item.kind is _Kind.RANGE:
                values.update(range(item.start, item.end + 1, item.step))
            else:
                return None
        return values


_ALL_RE = re.compile(r"\*(?:/(?P<step>.*))?")
_RANGE_RE = re.compile(r"(?P<start>[^-/]+)-(?P<end>[^-/]+)(?:/(?P<step>.*))?")
_START_STEP_RE = re.compile(r"(?P<start>[^-/]+)/(?P<step>.*)")
_NUMBER_RE = re.compile(r"[0-9]+")
_NTH_RE = re.compile(r"(?P<day>[^#]+)#(?P<number>.*)")
_LAST_OFFSET_RE = re.compile(r"L-(?P<number>.*)", re.IGNORECASE)
_NEAREST_WEEKDAY_RE = re.compile(r"(?P<day>[0-9]+)W", re.IGNORECASE)
# W and L-n are answered for one day at a time (croniter takes `15W` only alone; LW and L-n
# are filtered here), so they cannot sit in a list.
_MUST_STAND_ALONE = {_Kind.ANY, _Kind.LAST_WEEKDAY, _Kind.LAST_DAY_OFFSET, _Kind.NEAREST_WEEKDAY}


class _FieldParser:
    def __init__(self, source: str, spec: _FieldSpec) -> None:
        self.source = source
        self.spec = spec

    def fail(self, problem: str) -> NoReturn:
        raise InvalidCronExpression(f"cron expression '{self.source}': {self.spec.name} field {problem}")

    def parse(self, text: str) -> _Field:
        tokens = text.split(",")
        items: list[_Item] = []
        for token in tokens:
            if not token:
                self.fail(f"'{text}' has an empty item in its list")
            item = self.item(token)
            if item.kind in _MUST_STAND_ALONE and len(tokens) > 1:
                self.fail(f"'{text}': '{token}' must stand alone, not in a list")
            items.append(item)
        return _Field(self.spec, text, tuple(items))

    def item(self, token: str) -> _Item:
        if token == "?":
            if self.spec not in (_DAY_OF_MONTH, _CRON_DAY_OF_WEEK, _QUARTZ_DAY_OF_WEEK):
                self.fail("cannot be '?'; only day-of-month and day-of-week can")
            return _Item(_Kind.ANY)
        if self.spec is _DAY_OF_MONTH:
            special = self.day_of_month_special(token)
            if special is not None:
                return special
        if self.spec in (_CRON_DAY_OF_WEEK, _QUARTZ_DAY_OF_WEEK):
            special = self.day_of_week_special(token)
            if special is not None:
                return special
        if match := _ALL_RE.fullmatch(token):
            step = match["step"]
            return _Item(_Kind.ALL, step=1 if step is None else self.step(step))
        if match := _RANGE_RE.fullmatch(token):
            start, end = self.value(match["start"]), self.value(match["end"])
            if start > end:
                self.fail(
                    f"range '{match['start']}-{match['end']}' runs backwards; split it in two, "
                    f"e.g. '{match['start']}-{self.spec.high},{self.spec.low}-{match['end']}'"
                )
            step = match["step"]
            return _Item(_Kind.RANGE, start, end, 1 if step is None else self.step(step))
        if match := _START_STEP_RE.fullmatch(token):
            start = self.value(match["start"])
            return _Item(
                _Kind.RANGE, start, max(start, self.spec.step_high or self.spec.high), self.step(match["step"])
            )
        value = self.value(token)
        return _Item(_Kind.RANGE, value, value)

    def value(self, token: str) -> int:
        if _NUMBER_RE.fullmatch(token):
            number = int(token)
        elif self.spec.names and token.upper() in self.spec.names:
            number = self.spec.names[token.upper()]
        elif self.spec.names:
            self.fail(f"value '{token}' is neither a number nor {self.spec.names_hint}")
        else:
            self.fail(f"value '{token}' is not a number")
        if not self.spec.low <= number <= self.spec.high:
            self.fail(f"value {number} is out of range {self.spec.low}-{self.spec.high}{self.spec.range_note}")
        return number

    def step(self, token: str) -> int:
        if not _NUMBER_RE.fullmatch(token):
            self.fail(f"step '{token}' is not a number")
        step = int(token)
        span = self.spec.high - self.spec.low + 1
        if not 1 <= step <= span:
            self.fail(f"step {step} is out of range 1-{span}")
        return step

    def day_of_month_special(self, token: str) -> _Item | None:
        if token.upper() == "L":
            return _Item(_Kind.LAST_DAY)
        if token.upper() == "LW":
            return _Item(_Kind.LAST_WEEKDAY)
        if match := _LAST_OFFSET_RE.fullmatch(token):
            if not _NUMBER_RE.fullmatch(match["number"]) or int(match["number"]) > 30:
                self.fail(f"'{token}': the offset after 'L-' must be a number of days from 0 to 30")
            return _Item(_Kind.LAST_DAY_OFFSET, number=int(match["number"]))
        if match := _NEAREST_WEEKDAY_RE.fullmatch(token):
            day = self.value(match["day"])
            return _Item(_Kind.NEAREST_WEEKDAY, day, day)
        return None

    def day_of_week_special(self, token: str) -> _Item | None:
        saturday = self.spec.names["SAT"] if self.spec.names else 6
        if token.upper() == "L":  # Quartz: "L" alone in day-of-week is the last day of the week, Saturday
            return _Item(_Kind.RANGE, saturday, saturday)
        if match := _NTH_RE.fullmatch(token):
            day = self.value(match["day"])
            if not _NUMBER_RE.fullmatch(match["number"]) or not 1 <= int(match["number"]) <= 5:
                self.fail(f"'{token}': the occurrence after '#' must be 1 to 5")
            return _Item(_Kind.NTH_OF_WEEKDAY, day, day, number=int(match["number"]))
        if len(token) > 1 and token.upper().endswith("L"):
            day = self.value(token[:-1])
            return _Item(_Kind.LAST_OF_WEEKDAY, day, day)
        return None


@dataclass(frozen=True)
class _Parsed:
    syntax: Syntax
    fields: tuple[_Field, ...]

    def field(self, spec_name: str) -> _Field:
        return next(field for field in self.fields if field.spec.name == spec_name)


def _parse_fields(source: str) -> _Parsed:
    """Split and validate source (already stripped; macros already expanded)."""
    parts = source.split()
    if len(parts) == 5:
        syntax: Syntax = "cron"
        specs = _CRON_FIELDS
    elif len(parts) in (6, 7):
        syntax = "quartz"
        specs = _QUARTZ_FIELDS[: len(parts)]
    else:
        raise InvalidCronExpression(
            f"cron expression '{source}' has {len(parts)} field{'s' if len(parts) != 1 else ''}; expected 5 "
            "(minute hour day-of-month month day-of-week) or, Quartz style, 6 or 7 "
            "(second minute hour day-of-month month day-of-week [year])"
        )
    parsed = _Parsed(
        syntax, tuple(_FieldParser(source, spec).parse(text) for spec, text in zip(specs, parts, strict=True))
    )
    _check_days(source, parsed)
    return parsed


def _check_days(source: str, parsed: _Parsed) -> None:
    day_of_month, day_of_week = parsed.field("day-of-month"), parsed.field("day-of-week")
    prefix = f"cron expression '{source}'"
    if parsed.syntax == "quartz":
        if day_of_month.is_any and day_of_week.is_any:
            raise InvalidCronExpression(f"{prefix}: day-of-month and day-of-week are both '?'; only one of them may be")
        # Quartz wants '?' in one of the two; when the other side is '*' the meaning is still
        # unambiguous, and Spring-style six-field expressions ("0 0 9 * * MON") are written so.
        if not (day_of_month.is_every or day_of_week.is_every):
            raise InvalidCronExpression(
                f"{prefix}: day-of-month '{day_of_month.text}' and day-of-week '{day_of_week.text}' are both set; "
                "Quartz expressions need '?' in one of them"
            )
    # With a day-of-week set, standard cron fires on either match, so only a lone day-of-month can be impossible.
    days, months = day_of_month.values(), parsed.field("month").values()
    if days and months and day_of_week.is_every and min(days) > max(_LONGEST_MONTH[month] for month in months):
        month_names = ", ".join(calendar.month_name[month] for month in sorted(months))
        raise InvalidCronExpression(
            f"{prefix}: day-of-month field value {min(days)} never occurs in the months selected ({month_names})"
        )


def _croniter_day_of_week(value: int, spec: _FieldSpec) -> int:
    """croniter counts 0-6 from Sunday; Quartz counts 1-7 from Sunday, cron also allows 7 for Sunday."""
    return value - 1 if spec is _QUARTZ_DAY_OF_WEEK else value % 7


def _croniter_item(item: _Item, spec: _FieldSpec) -> str:
    is_day_of_week = spec in (_CRON_DAY_OF_WEEK, _QUARTZ_DAY_OF_WEEK)
    match item.kind:
        case _Kind.ALL | _Kind.ANY:
            return "*" if item.step == 1 else f"*/{item.step}"
        case _Kind.LAST_DAY:
            return "L"
        case _Kind.LAST_WEEKDAY:
            return "LW"  # no croniter form; next_fire_times narrows the days and filters
        case _Kind.LAST_DAY_OFFSET:
            return f"L-{item.number}"  # likewise
        case _Kind.NEAREST_WEEKDAY:
            return f"{item.start}W"
        case _Kind.LAST_OF_WEEKDAY:
            return f"L{_croniter_day_of_week(item.start, spec)}"
        case _Kind.NTH_OF_WEEKDAY:
            return f"{_croniter_day_of_week(item.start, spec)}#{item.number}"
    if is_day_of_week:
        days = sorted({_croniter_day_of_week(day, spec) for day in range(item.start, item.end + 1, item.step)})
        if spec is _CRON_DAY_OF_WEEK and item.end == 7:
            # croniter reads "5-7" as a wrapping range; spelling the days out leaves nothing to interpret.
            return ",".join(str(day) for day in days)
        start, end = _croniter_day_of_week(item.start, spec), _croniter_day_of_week(item.end, spec)
    else:
        start, end = item.start, item.end
    if start == end or start + item.step > end:
        # croniter reads an equal range such as "9-9" as the whole field.
        return str(start)
    return f"{start}-{end}" if item.step == 1 else f"{start}-{end}/{item.step}"


def _croniter_field(field: _Field) -> str:
    spec = field.spec
    values = field.values()
    if spec not in (_DAY_OF_MONTH, _CRON_DAY_OF_WEEK, _QUARTZ_DAY_OF_WEEK) and values == set(
        range(spec.low, spec.high + 1)
    ):
        # "0-23" and "*/1" become "*", which is also how next_fire_times recognises an every-hour schedule.
        return "*"
    return ",".join(_croniter_item(item, spec) for item in field.items)


def _description_item(item: _Item, spec: _FieldSpec) -> str:
    match item.kind:
        case _Kind.ALL:
            return "*" if item.step == 1 else f"*/{item.step}"
        case _Kind.ANY:
            return "?"
        case _Kind.LAST_DAY:
            return "L"
        case _Kind.LAST_WEEKDAY:
            return "LW"
        case _Kind.LAST_DAY_OFFSET:
            return f"L-{item.number}"
        case _Kind.NEAREST_WEEKDAY:
            return f"{item.start}W"
        case _Kind.LAST_OF_WEEKDAY:
            return f"{item.start % 7 if spec is _CRON_DAY_OF_WEEK else item.start}L"
        case _Kind.NTH_OF_WEEKDAY:
            return f"{item.start % 7 if spec is _CRON_DAY_OF_WEEK else item.start}#{item.number}"
    if item.start == item.end:
        return str(item.start)
    return f"{item.start}-{item.end}" if item.step == 1 else f"{item.start}-{item.end}/{item.step}"


@dataclass(frozen=True)
class CronExpression:
    """A validated schedule expression.

    source is the expression as entered (stripped), syntax is "cron" (5 fields or an @macro)
    or "quartz" (6 or 7 fields, seconds first), normalized is the form handed to croniter:
    names replaced by numbers, days of week counted 0-6 from Sunday, '?' as '*', macros
    expanded, seconds first for Quartz. The Quartz day-of-month forms LW and L-n have no
    croniter spelling and are kept as written; next_fire_times handles them.
    """

    source: str
    syntax: Syntax
    normalized: str

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        """Validate expression; InvalidCronExpression [E2012] names the field and value at fault."""
        if not isinstance(expression, str) or not expression.strip():
            raise InvalidCronExpression("cron expression is empty")
        source = expression.strip()
        expanded = _expand_macro(source)
        parsed = _parse_fields(expanded)
        normalized = " ".join(_croniter_field(field) for field in parsed.fields)
        cron = cls(source=source, syntax=parsed.syntax, normalized=normalized)
        try:
            # Every field was checked above; this guards against a form croniter reads differently.
            croniter(_plan(cron).croniter_expression, datetime(2000, 1, 1), second_at_beginning=cron.syntax == "quartz")
        except CroniterError as error:
            raise InvalidCronExpression(f"cron expression '{source}' is not supported: {error}") from error
        return cron

    def __str__(self) -> str:
        return self.source


def parse(expression: str) -> CronExpression:
    """Validate expression; see CronExpression.parse."""
    return CronExpression.parse(expression)


def _expand_macro(source: str) -> str:
    if not source.startswith("@"):
        return source
    try:
        return _MACROS[source.lower()]
    except KeyError:
        raise InvalidCronExpression(
            f"cron expression '{source}' is not a known shortcut; use one of {', '.join(_MACROS)}"
        ) from None


def _coerce(expression: str | CronExpression) -> CronExpression:
    return expression if isinstance(expression, CronExpression) else CronExpression.parse(expression)


@cache
def _time_zone_names() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def validate_time_zone(name: str) -> str:
    """The IANA name as the tz database spells it ("europe/berlin" → "Europe/Berlin"); InvalidTimeZone [E2012]."""
    text = name.strip() if isinstance(name, str) else ""
    canonical = _time_zone_names().get(text.lower())
    if canonical is None:
        raise InvalidTimeZone(f"time zone '{name}' is not an IANA time zone name such as 'Europe/Berlin' or 'UTC'")
    try:
        ZoneInfo(canonical)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidTimeZone(f"time zone '{name}' cannot be loaded: {error}") from error
    return canonical


@dataclass(frozen=True)
class _Plan:
    croniter_expression: str
    seconds_first: bool
    every_hour: bool
    day_rule: Callable[[date], bool] | None


def _last_weekday_of_month(day: date) -> bool:
    last = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
    # Saturday steps back one day to Friday, Sunday two.
    last -= timedelta(days=max(0, last.weekday() - 4))
    return day == last


def _days_before_last(offset: int) -> Callable[[date], bool]:
    def matches(day: date) -> bool:
        return day.day == calendar.monthrange(day.year, day.month)[1] - offset

    return matches


def _plan(cron: CronExpression) -> _Plan:
    fields = cron.normalized.split()
    quartz = cron.syntax == "quartz"
    hour_index, day_index = (2, 3) if quartz else (1, 2)
    day_rule: Callable[[date], bool] | None = None
    # croniter knows neither LW nor L-n: ask it for the days they can fall on, keep the right one.
    if fields[day_index] == "LW":
        fields[day_index], day_rule = "26-31", _last_weekday_of_month
    elif match := re.fullmatch(r"L-([0-9]+)", fields[day_index]):
        offset = int(match[1])
        low, high = max(1, 28 - offset), 31 - offset
        fields[day_index] = str(low) if low == high else f"{low}-{high}"
        day_rule = _days_before_last(offset)
    return _Plan(" ".join(fields), quartz, fields[hour_index] == "*", day_rule)


def _wall_clock_candidates(plan: _Plan, start: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching the plan, strictly after start; croniter sees no time zone at all."""
    try:
        iterator = croniter(plan.croniter_expression, start, ret_type=datetime, second_at_beginning=plan.seconds_first)
    except CroniterError as error:
        raise InvalidCronExpression(
            f"cron expression '{plan.croniter_expression}' is not supported: {error}"
        ) from error
    while True:
        try:
            candidate = iterator.get_next()
        except CroniterBadDateError:
            return  # the schedule has ended (its years are over)
        if plan.day_rule is not None and not plan.day_rule(candidate.date()):
            end_of_day = datetime.combine(candidate.date() + timedelta(days=1), datetime.min.time())
            iterator.set_current(end_of_day - timedelta(microseconds=1), force=True)
            continue
        yield candidate


def _instants(wall: datetime, zone: tzinfo, every_hour: bool) -> tuple[list[datetime], bool]:
    """The UTC instants at which a wall-clock time fires, and whether the time is an ordinary one.

    fold=0 reads a time with the offset in force before a transition (PEP 495). In a gap
    (spring forward) that lands as far past the gap as the time was into it: 02:30 fires at
    03:30, the instant 24 hours after yesterday's 02:30. In a repeated hour (fall back) a
    time fires at its first occurrence only, unless the schedule runs every hour: then it
    follows real time and fires in the repeated hour too, as hourly schedules must.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first], True
    if first > second or not every_hour:  # a gap, or a fixed time in a repeated hour
        return [first], False
    return [first, second], False


def _look_back(local: datetime) -> timedelta:
    """How far before `after` wall-clock candidates can still fire after it."""
    offset = local.utcoffset()
    assert offset is not None
    day_before = (local - timedelta(days=1)).astimezone(local.tzinfo).utcoffset()
    assert day_before is not None
    # Clocks went forward within the last day: a time in that gap fires gap-length later.
    look_back = max(timedelta(0), offset - day_before)
    second_pass = local.replace(fold=1).utcoffset()
    if local.fold == 0 and second_pass is not None and second_pass < offset:
        # `after` is in the first pass of a repeated hour; every-hour schedules fire in the second pass too.
        look_back = max(look_back, offset - second_pass)
    return look_back


def next_fire_times(
    expression: str | CronExpression, after: datetime, *, tz: str | None = None, count: int = 5
) -> list[datetime]:
    """The next count fire times strictly after `after`, as aware UTC datetimes in increasing order.

    The expression is read in the wall-clock time of tz (an IANA name; UTC when None); see
    _instants for what happens when clocks change. Fewer than count come back when the
    schedule ends (a Quartz year field that runs out).
    """
    cron = _coerce(expression)
    if after.utcoffset() is None:
        raise ValueError("after must be a timezone-aware datetime")
    if count < 1:
        return []
    zone: tzinfo = UTC if tz is None else ZoneInfo(validate_time_zone(tz))
    plan = _plan(cron)
    after_utc = after.astimezone(UTC)
    local = after_utc.astimezone(zone)
    start = local.replace(tzinfo=None) - _look_back(local)
    earliest: list[datetime] = []  # the count earliest instants found so far, sorted, no duplicates
    for wall in _wall_clock_candidates(plan, start):
        instants, ordinary = _instants(wall, zone, plan.every_hour)
        for instant in instants:
            if instant > after_utc:
                _keep_earliest(earliest, instant, count)
        # Ordinary times fire in wall-clock order; only gap and repeated-hour times can come
        # out of order, so once an ordinary time is past the count-th instant none earlier can follow.
        if ordinary and len(earliest) == count and instants[0] >= earliest[-1]:
            break
    return earliest


def _keep_earliest(earliest: list[datetime], instant: datetime, count: int) -> None:
    position = bisect.bisect_left(earliest, instant)
    if position >= count or (position < len(earliest) and earliest[position] == instant):
        return  # a gap time shifted onto a time the schedule fires at anyway fires once
    earliest.insert(position, instant)
    del earliest[count:]


def next_fire_time(expression: str | CronExpression, after: datetime, *, tz: str | None = None) -> datetime | None:
    """The first fire time strictly after `after` (aware UTC), or None when the schedule has ended."""
    times = next_fire_times(expression, after, tz=tz, count=1)
    return times[0] if times else None


def describe(expression: str | CronExpression) -> str:
    """Plain-English description, e.g. "At 12:00 PM, on the third Friday of the month"."""
    cron = _coerce(expression)
    parsed = _parse_fields(_expand_macro(cron.source))
    fields = [",".join(_description_item(item, field.spec) for item in field.items) for field in parsed.fields]
    if parsed.syntax == "quartz" and len(fields) == 6:
        # cron-descriptor reads a six-field expression with '?' as minutes-first with a year.
        fields.append("*")
    options = Options(
        locale_code="en_US",
        use_24hour_time_format=False,
        day_of_week_start_index_zero=parsed.syntax == "cron",
    )
    try:
        return ExpressionDescriptor(" ".join(fields), options).get_description()
    except Exception:
        # The description is a courtesy on the console; an expression that validated must not
        # become an error because the describing library has no words for it.
        return f"Cron schedule {cron.source}"
