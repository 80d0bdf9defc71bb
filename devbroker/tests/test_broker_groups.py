"""The shim's consumer-group session clock, driven with explicit ``now`` values (no wall clock)."""

from __future__ import annotations

from fraudlens_devbroker.groups import DEFAULT_SESSION_TIMEOUT_S, GroupSessions, Member

GROUP = "fraudlens"


def ids(members: list[Member]) -> list[tuple[str, str]]:
    return sorted((m.group_id, m.member_id) for m in members)


def test_member_is_not_expired_within_its_session_timeout() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 30_000, now=100.0)

    assert sessions.expired(now=129.9) == []
    assert (GROUP, "m-1") in sessions.members


def test_member_silent_exactly_its_timeout_is_not_yet_expired() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 30_000, now=100.0)

    assert sessions.expired(now=130.0) == []


def test_member_silent_longer_than_its_timeout_is_expired_and_forgotten() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", "scorer-0", 30_000, now=100.0)

    dead = sessions.expired(now=130.5)

    assert [(m.group_id, m.member_id, m.instance_id) for m in dead] == [(GROUP, "m-1", "scorer-0")]
    assert sessions.members == {}
    assert sessions.expired(now=1_000.0) == []


def test_missing_session_timeout_defaults_to_ten_seconds() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, None, now=0.0)

    assert sessions.members[(GROUP, "m-1")].session_timeout_s == DEFAULT_SESSION_TIMEOUT_S
    assert sessions.expired(now=DEFAULT_SESSION_TIMEOUT_S) == []
    assert ids(sessions.expired(now=DEFAULT_SESSION_TIMEOUT_S + 0.1)) == [(GROUP, "m-1")]


def test_each_member_expires_on_its_own_timeout() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "short", None, 5_000, now=0.0)
    sessions.joined(GROUP, "long", None, 60_000, now=0.0)

    assert ids(sessions.expired(now=6.0)) == [(GROUP, "short")]
    assert list(sessions.members) == [(GROUP, "long")]


def test_heartbeat_restarts_the_session_clock() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)
    sessions.seen(GROUP, "m-1", now=8.0)

    assert sessions.expired(now=15.0) == []
    assert ids(sessions.expired(now=18.5)) == [(GROUP, "m-1")]


def test_heartbeat_from_an_unknown_member_does_not_start_tracking_it() -> None:
    sessions = GroupSessions()

    sessions.seen(GROUP, "stranger", now=1.0)

    assert sessions.members == {}


def test_leave_forgets_the_member_so_it_is_never_evicted() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)
    sessions.joined(GROUP, "m-2", None, 10_000, now=0.0)

    sessions.left(GROUP, "m-1")

    assert ids(sessions.expired(now=100.0)) == [(GROUP, "m-2")]


def test_leave_of_an_unknown_member_is_harmless() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)

    sessions.left(GROUP, "other")
    sessions.left("other-group", "m-1")

    assert list(sessions.members) == [(GROUP, "m-1")]


def test_in_flight_join_protects_a_silent_member_from_expiry() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)

    sessions.request_started(GROUP, "m-1")

    assert sessions.expired(now=300.0) == []


def test_finished_request_restarts_the_clock_from_its_finish_time() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)
    sessions.request_started(GROUP, "m-1")

    sessions.request_finished(GROUP, "m-1", now=200.0)

    assert sessions.expired(now=209.0) == []
    assert ids(sessions.expired(now=210.5)) == [(GROUP, "m-1")]


def test_two_in_flight_requests_protect_until_both_finish() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)
    sessions.request_started(GROUP, "m-1")
    sessions.request_started(GROUP, "m-1")

    sessions.request_finished(GROUP, "m-1", now=50.0)

    assert sessions.expired(now=100.0) == []
    sessions.request_finished(GROUP, "m-1", now=100.0)
    assert ids(sessions.expired(now=111.0)) == [(GROUP, "m-1")]


def test_unmatched_request_finish_does_not_leave_a_negative_in_flight_count() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)
    sessions.request_finished(GROUP, "m-1", now=1.0)
    sessions.request_finished(GROUP, "m-1", now=2.0)

    sessions.request_started(GROUP, "m-1")

    assert sessions.members[(GROUP, "m-1")].in_flight == 1
    assert sessions.expired(now=100.0) == []


def test_requests_of_an_unknown_member_do_not_start_tracking_it() -> None:
    sessions = GroupSessions()

    sessions.request_started(GROUP, "")  # a first JoinGroup has no member id yet
    sessions.request_finished(GROUP, "", now=1.0)

    assert sessions.members == {}


def test_static_member_rejoining_with_a_new_id_replaces_its_predecessor() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "old-id", "scorer-0", 10_000, now=0.0)

    sessions.joined(GROUP, "new-id", "scorer-0", 10_000, now=5.0)

    assert list(sessions.members) == [(GROUP, "new-id")]
    dead = sessions.expired(now=100.0)
    assert [(m.member_id, m.instance_id) for m in dead] == [("new-id", "scorer-0")]


def test_static_replacement_keeps_other_instances_and_dynamic_members() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "a-old", "scorer-a", 10_000, now=0.0)
    sessions.joined(GROUP, "b", "scorer-b", 10_000, now=0.0)
    sessions.joined(GROUP, "dynamic", None, 10_000, now=0.0)

    sessions.joined(GROUP, "a-new", "scorer-a", 10_000, now=1.0)

    assert sorted(sessions.members) == [(GROUP, "a-new"), (GROUP, "b"), (GROUP, "dynamic")]


def test_same_instance_id_in_another_group_is_a_different_member() -> None:
    sessions = GroupSessions()
    sessions.joined("group-a", "m-a", "scorer-0", 10_000, now=0.0)

    sessions.joined("group-b", "m-b", "scorer-0", 10_000, now=0.0)

    assert sorted(sessions.members) == [("group-a", "m-a"), ("group-b", "m-b")]


def test_dynamic_members_never_replace_each_other() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", None, 10_000, now=0.0)

    sessions.joined(GROUP, "m-2", None, 10_000, now=0.0)

    assert sorted(sessions.members) == [(GROUP, "m-1"), (GROUP, "m-2")]


def test_rejoin_with_the_same_id_keeps_the_member_and_refreshes_timeout_and_clock() -> None:
    sessions = GroupSessions()
    sessions.joined(GROUP, "m-1", "scorer-0", 10_000, now=0.0)
    sessions.request_started(GROUP, "m-1")

    sessions.joined(GROUP, "m-1", "scorer-0", 45_000, now=20.0)

    member = sessions.members[(GROUP, "m-1")]
    assert (member.session_timeout_s, member.last_seen, member.in_flight) == (45.0, 20.0, 1)


def test_same_member_id_in_two_groups_is_tracked_separately() -> None:
    sessions = GroupSessions()
    sessions.joined("group-a", "m-1", None, 10_000, now=0.0)
    sessions.joined("group-b", "m-1", None, 10_000, now=0.0)
    sessions.seen("group-b", "m-1", now=9.0)

    assert ids(sessions.expired(now=12.0)) == [("group-a", "m-1")]
    assert list(sessions.members) == [("group-b", "m-1")]
