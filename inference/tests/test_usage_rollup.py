"""Usage rolled up into hourly and daily totals: the same sums as the raw records, however often the
rollup runs; raw records and hourly totals expire; the month's usage is read from the daily totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from inference import services
from inference.models import InferenceKey, UsageRecord, UsageTotal
from inference.tests.test_usage import record
from tests.support.nodes import api_as

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 30, 14, 30, tzinfo=UTC)


def at(workspace, when: datetime, **kwargs) -> UsageRecord:
    r = record(workspace, **kwargs)
    r.created_at = when
    return r


def totals(period: str) -> dict:
    return {
        (t.start, t.model, t.caller): (t.requests, t.errors, t.prompt_tokens, t.completion_tokens)
        for t in UsageTotal.objects.filter(period=period)
    }


@pytest.fixture
def key(cast) -> InferenceKey:
    return services.inference_key_create(workspace=cast.team, name="app")[0]


def test_hours_and_days_hold_the_sums_of_the_raw_records(cast, key):
    caller = f"app ({key.prefix}…)"
    services.usage_record_many(
        records=[
            at(cast.team, NOW - timedelta(minutes=5), key=key, model="demo"),
            at(cast.team, NOW - timedelta(minutes=20), key=key, model="demo", status=502, completion=0),
            at(cast.team, NOW - timedelta(hours=2), key=key, model="demo:pirate"),
            at(cast.team, NOW - timedelta(hours=15), key=key, model="demo"),  # yesterday, 23:30
        ]
    )
    services.usage_rollup(now=NOW)

    hour = NOW.replace(minute=0)
    assert totals("hour") == {
        (hour, "demo", caller): (2, 1, 20, 20),
        (hour - timedelta(hours=2), "demo:pirate", caller): (1, 0, 10, 20),
        (hour - timedelta(hours=15), "demo", caller): (1, 0, 10, 20),
    }
    today = NOW.replace(hour=0, minute=0)
    assert totals("day") == {
        (today, "demo", caller): (2, 1, 20, 20),
        (today, "demo:pirate", caller): (1, 0, 10, 20),
        (today - timedelta(days=1), "demo", caller): (1, 0, 10, 20),
    }


def test_running_again_or_after_a_late_record_gives_the_right_sums_once(cast):
    services.usage_record_many(records=[at(cast.team, NOW - timedelta(minutes=5))])
    services.usage_rollup(now=NOW)
    services.usage_rollup(now=NOW)
    # A long stream is recorded when it ends, at the time it began: three hours ago.
    services.usage_record_many(records=[at(cast.team, NOW - timedelta(hours=3))])
    services.usage_rollup(now=NOW + timedelta(minutes=10))

    assert sum(t.requests for t in UsageTotal.objects.filter(period="hour")) == 2
    assert sum(t.requests for t in UsageTotal.objects.filter(period="day")) == 2


def test_raw_records_and_hourly_totals_expire_daily_totals_stay(cast, settings):
    settings.PLUGBOARD_USAGE_RAW_DAYS, settings.PLUGBOARD_USAGE_HOURLY_DAYS = 8, 90
    services.usage_record_many(
        records=[at(cast.team, NOW - timedelta(days=9)), at(cast.team, NOW - timedelta(days=7, hours=23))]
    )
    old = dict(workspace=cast.team, deployment="demo", model="demo", caller="x", requests=5, errors=0,
               prompt_tokens=1, completion_tokens=1, duration_ms_sum=1.0, ttft_ms_sum=1.0, ttft_count=1)  # fmt: skip
    UsageTotal.objects.create(period="hour", start=NOW - timedelta(days=91), **old)
    UsageTotal.objects.create(period="day", start=NOW - timedelta(days=400), **old)

    assert services.usage_rollup(now=NOW) == 1
    assert list(UsageRecord.objects.values_list("created_at", flat=True)) == [NOW - timedelta(days=7, hours=23)]
    assert not UsageTotal.objects.filter(period="hour").exists()
    assert UsageTotal.objects.filter(period="day").count() == 1


def test_the_months_usage_comes_from_daily_totals_of_the_callers_workspaces(cast, key):
    now = timezone.now()
    services.usage_record_many(records=[at(cast.team, now - timedelta(minutes=1), key=key), at(cast.other, now)])
    services.usage_rollup()
    twenty_days_ago = dict(workspace=cast.team, deployment="demo", model="demo", caller="old key", requests=7,
                           errors=1, prompt_tokens=70, completion_tokens=140, duration_ms_sum=700.0,
                           ttft_ms_sum=35.0, ttft_count=7)  # fmt: skip
    UsageTotal.objects.create(period="day", start=(now - timedelta(days=20)).replace(hour=0), **twenty_days_ago)

    summary = api_as(cast.viewer).get("/api/v1/usage/summary/?period=month&by=key").json()
    groups = {g["name"]: g for g in summary["groups"]}
    assert set(groups) == {"old key", f"app ({key.prefix}…)"}  # not the other workspace's
    assert (groups["old key"]["requests"], groups["old key"]["mean_ttft_ms"]) == (7, 5.0)
    assert groups["old key"]["mean_duration_ms"] == 100.0
    assert len(summary["series"]) == 2


def test_the_usage_page_shows_a_month(cast, client):
    client.force_login(cast.viewer)
    response = client.get("/inference/usage/?period=month&by=deployment")
    assert response.status_code == 200
    assert "Last month" in response.content.decode()
