"""Audiences in-process: the written form, the existence check, memberships from Django's auth,
the wire form without the audience, and the hub's per-audience index (properties over random
receivers, memberships and changes)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster import audiences, protocol
from broadcaster.fanout.hub import Hub
from broadcaster.history import current
from broadcaster.history.entry import Entry
from broadcaster.identity import NOBODY

pytestmark = pytest.mark.django_db


def test_written_form_is_sorted_once_and_everyone_absorbs_the_rest():
    """A string or a list; sorted, each once; `everyone` among them is everyone."""
    assert audiences.parse(None) is protocol.AUDIENCE_EVERYONE
    assert audiences.parse("group:ops") == ("group:ops",)
    assert audiences.parse(["user:b", "staff", "user:b", "group:a b"]) == ("group:a b", "staff", "user:b")
    assert audiences.parse(["group:ops", "everyone"]) is protocol.AUDIENCE_EVERYONE


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nobody", "Unknown audience 'nobody'; an audience is one of everyone, authenticated, staff, "
                   "group:<value>, perm:<value>, user:<value>."),
        ("team:x", "Unknown audience 'team:x'; an audience is one of everyone, authenticated, staff, "
                   "group:<value>, perm:<value>, user:<value>."),
        ("user:", "The audience 'user:' names no user (an empty or blank value)."),
        ("group: ops", "The audience 'group: ops' names no group (an empty or blank value)."),
        ([], "The audience must be a string or a non-empty list of strings; got []."),
        (7, "The audience must be a string or a non-empty list of strings; got 7."),
        (["staff", 3], "Each audience must be a string; got 3."),
        (["staff"] * 101, "A broadcast may name at most 100 audiences; got 101."),
        ("user:" + "x" * 300, "An audience may be at most 300 characters long."),
    ],
)  # fmt: skip
def test_malformed_audiences_are_refused_saying_which(value, message):
    """Each malformed audience gets a named error that says what is wrong."""
    with pytest.raises(audiences.InvalidAudience) as refused:
        audiences.parse(value)
    assert str(refused.value) == message


def test_an_audience_naming_what_does_not_exist_is_refused():
    """A user, group or permission that does not exist is refused: nothing goes to nobody."""
    User.objects.create_user("alice")
    Group.objects.create(name="ops")
    assert audiences.check(["user:alice", "group:ops", "perm:broadcaster.send_broadcast"]) == (
        "group:ops", "perm:broadcaster.send_broadcast", "user:alice")  # fmt: skip
    for value, message in [
        (["user:alice", "user:zed", "user:amy"], "No user 'amy', 'zed' exists: nothing was sent."),
        ("group:dev", "No group 'dev' exists: nothing was sent."),
        ("perm:broadcaster.fly", "No permission 'broadcaster.fly' exists: nothing was sent."),
        ("perm:nodot", "No permission 'nodot' exists: nothing was sent."),
    ]:
        with pytest.raises(audiences.InvalidAudience) as refused:
            audiences.check(value)
        assert str(refused.value) == message


def tenant_of(user):
    """A host's own kind (BROADCAST_AUDIENCE_KINDS): the tenants a user belongs to."""
    return {"acme"} if user.username.startswith("a") else set()


def test_memberships_follow_djangos_users_groups_and_permissions(settings):
    """Everyone, authenticated, the user, staff, groups, permissions (direct, through a group,
    all for a superuser), a host's own kind; an inactive user is anonymous."""
    settings.BROADCAST_AUDIENCE_KINDS = {"tenant": "tests.test_audiences.tenant_of"}
    send = Permission.objects.get(codename="send_broadcast")
    view = Permission.objects.get(codename="view_group")
    ops = Group.objects.create(name="ops")
    ops.permissions.add(view)
    alice = User.objects.create_user("alice", is_staff=True)
    alice.groups.add(ops)
    alice.user_permissions.add(send)
    assert audiences.memberships(alice) == {
        "everyone", "authenticated", "user:alice", "staff", "group:ops", "perm:auth.view_group",
        "perm:broadcaster.send_broadcast", "tenant:acme",
    }  # fmt: skip
    bob = User.objects.create_user("bob")
    assert audiences.memberships(bob) == {"everyone", "authenticated", "user:bob"}
    root = User.objects.create_superuser("root")
    assert {"perm:auth.view_group", "perm:broadcaster.send_broadcast"} <= audiences.memberships(root)
    gone = User.objects.create_user("amy", is_active=False)
    gone.groups.add(ops)
    assert audiences.memberships(gone) == protocol.ANONYMOUS
    assert audiences.parse("tenant:acme") == ("tenant:acme",)


@given(
    st.lists(st.text(min_size=1, max_size=12).filter(str.isprintable), min_size=1, max_size=4, unique=True)
)
def test_receivers_never_see_the_audience_field(names):
    """The kept frame names its audience; the wire frame is the same frame without it, whatever
    the names hold (quotes, brackets, the field's own spelling)."""
    names = [f"group:{n.strip() or 'x'}" for n in names]
    audience = tuple(sorted(set(names)))
    kept = protocol.message_frame(seq=1, epoch="e", id="a" * 32, text='x ,"audience":["y"]', time="t",
                                  audience=audience)  # fmt: skip
    entry = Entry(seq=1, epoch="e", frame=kept)
    assert entry.audience == audience
    wire = json.loads(entry.wire)
    assert "audience" not in wire
    assert wire == {k: v for k, v in json.loads(kept).items() if k != "audience"}
    assert protocol.entry_id(entry.wire) == "a" * 32


class Fake:
    """A receiver as the hub sees it, recording nothing: only its index matters here."""

    def __init__(self, n: int, member_of: frozenset[str]) -> None:
        self.channel_name = f"fake.{n}"
        self.member_of = member_of
        self.credential = None
        self.identity = NOBODY

    def write(self, *args: object) -> bool:
        return True

    def signed_out(self) -> None:
        pass


AUDIENCES = ["authenticated", "staff", "user:a", "user:b", "group:x", "group:y", "perm:p.q", "tenant:t"]
memberships = st.frozensets(st.sampled_from(AUDIENCES)).map(lambda s: frozenset({"everyone", *s}))


@settings(max_examples=200)
@given(
    start=st.lists(memberships, min_size=0, max_size=12),
    changes=st.lists(st.tuples(st.integers(0, 11), st.one_of(st.none(), memberships)), max_size=20),
    audience=st.lists(st.sampled_from(["everyone", *AUDIENCES]), min_size=1, max_size=3),
)
async def test_hub_reaches_exactly_the_members_through_joins_leaves_and_regroups(start, changes, audience):
    """Whatever receivers join, leave and change memberships, a broadcast for an audience is
    written to exactly the receivers whose memberships meet it, each once."""
    hub = Hub()
    fakes = [Fake(i, m) for i, m in enumerate(start)]
    for f in fakes:
        hub.add(f)
    for i, change in changes:
        if i >= len(fakes):
            continue
        if change is None:
            hub.discard(fakes[i])
        else:
            hub.regroup(fakes[i], change)
    parsed = protocol.AUDIENCE_EVERYONE if "everyone" in audience else tuple(sorted(set(audience)))
    reached = hub.audience_receivers(parsed)
    assert len(reached) == len(set(reached))
    want = {f for f in fakes if f in hub.receivers and (parsed is protocol.AUDIENCE_EVERYONE
                                                        or f.member_of & set(parsed))}  # fmt: skip
    assert set(reached) == want
    await hub.stop()


kinds = st.sampled_from(["m", "m", "m", "r"])


@given(
    entries=st.lists(
        st.tuples(kinds, st.sampled_from([("everyone",), ("group:x",), ("user:a",)])), max_size=10
    ),
    member_of=memberships,
)
def test_current_announcement_is_the_newest_for_the_receiver(entries, member_of):
    """A new client's current announcement is the newest message for it (unless a later
    retraction for it takes it back), with its later retractions: others do not exist for it."""
    built = []
    for seq, (kind, audience) in enumerate(entries, start=1):
        aud = protocol.AUDIENCE_EVERYONE if audience == ("everyone",) else audience
        if kind == "m":
            frame = protocol.message_frame(
                seq=seq, epoch="e", id=f"{seq:032x}", text="t", time="t", audience=aud
            )
        else:  # takes back the newest message before it with the same audience, if any
            target = next((e for e in reversed(built) if e.kind == "message" and e.audience == aud), None)
            if target is None:
                continue
            frame = protocol.retract_frame(seq=seq, epoch="e", id=target.id, time="t", audience=aud)
        built.append(Entry(seq=seq, epoch="e", frame=frame))
    mine = [e for e in built if protocol.for_member(e.audience, member_of)]
    # The model: the newest message of mine, unless one of my later retractions takes it back.
    newest = next((i for i in range(len(mine) - 1, -1, -1) if mine[i].kind == "message"), None)
    if newest is None:
        want = None
    elif any(e.kind == "retract" and e.id == mine[newest].id for e in mine[newest:]):
        want = []
    else:
        want = mine[newest:]
    got = current.announcement(reversed(built), now=0.0, member_of=member_of)
    assert got == want


def test_an_announcement_redis_cannot_take_is_logged_once_and_later_ones_wait(
    dead_redis_url, settings, caplog
):
    """A membership change announced while Redis is unreachable (a save in the admin, a host's
    tests without Redis) is one error line, and the next ones within QUIET_AFTER_FAILURE are
    skipped rather than each waiting on Redis."""
    from broadcaster import changes

    settings.REDIS_URL = dead_redis_url
    changes._failed_until = 0.0
    try:
        for _ in range(3):
            changes._append('{"users":["1"],"credentials":[],"everyone":false}')
    finally:
        changes._failed_until = 0.0
    errors = [r for r in caplog.records if r.name == "broadcaster.changes"]
    assert len(errors) == 1
    assert (
        errors[0]
        .getMessage()
        .startswith("Membership changes could not be announced for 10 s (Redis unreachable:")
    )


async def test_the_change_feed_says_what_changed_and_everyone_after_a_hole(redis_url, monkeypatch):
    """A reader's first look, a hole (more changes than are kept) and a feed that went back
    (Redis lost its data) all mean `everyone`; otherwise exactly the users and credentials."""
    import redis.asyncio as aioredis

    from broadcaster import changes

    monkeypatch.setattr(changes, "KEEP", 5)
    client = aioredis.Redis.from_url(redis_url)
    feed = changes.Feed()
    changes._append('{"users":["1"],"credentials":[],"everyone":false}')
    assert (await feed.read(client)).everyone is True  # the first look
    assert await feed.read(client) is None
    changes._append('{"users":["2","3"],"credentials":["session:ab"],"everyone":false}')
    changes._append('{"users":["3"],"credentials":[],"everyone":false}')
    got = await feed.read(client)
    assert (got.everyone, got.users, got.credentials) == (False, {"2", "3"}, {"session:ab"})
    for _ in range(changes.KEEP + 1):  # more than are kept: the oldest unseen one is gone
        changes._append('{"users":["4"],"credentials":[],"everyone":false}')
    assert (await feed.read(client)).everyone is True
    await client.flushall()  # Redis lost its data: numbering went back
    changes._append('{"users":["5"],"credentials":[],"everyone":false}')
    assert (await feed.read(client)).everyone is True
    feed.lost()  # this process could not read for a while
    assert (await feed.read(client)).everyone is True
    await client.aclose()


@pytest.mark.django_db(transaction=True)
async def test_tabs_that_connect_together_share_one_database_read(monkeypatch):
    """20 handshakes with one receiver token at once: one read of its identity, shared by
    all; the receiver reading it goes away mid-read (cancelled): the others take over."""
    import asyncio

    from asgiref.sync import sync_to_async

    from broadcaster import identity
    from broadcaster.fanout.membership import Members
    from broadcaster.models import ReceiverToken

    @sync_to_async
    def token_for(name: str) -> str:
        user = User.objects.create(username=name)
        token = ReceiverToken(user=user)
        secret = token.issue_secret()
        token.save()
        return secret

    found = identity.Credential(kind=identity.TOKEN, secret=await token_for("tabs"))
    reads: list[str] = []
    gate = asyncio.Event()
    real = identity.resolve

    def counted(credential: identity.Credential) -> identity.Identity:
        reads.append(credential.key)
        return real(credential)

    monkeypatch.setattr(identity, "resolve", counted)
    members = Members(hub=None)  # type: ignore[arg-type]
    whos = await asyncio.gather(*(members.identify(found) for _ in range(20)))
    assert len(reads) == 1 and {w.user_id for w in whos} != {None} and len(set(whos)) == 1

    async def slow_first(credential: identity.Identity) -> None:
        await gate.wait()

    other = identity.Credential(kind=identity.TOKEN, secret=await token_for("cancelled"))
    monkeypatch.setattr(Members, "_resolve", lambda self, c: slow_first(c), raising=True)
    first = asyncio.ensure_future(members.identify(other))
    await asyncio.sleep(0)  # (the first is now reading)
    waiters = [asyncio.ensure_future(members.identify(other)) for _ in range(3)]
    await asyncio.sleep(0)
    monkeypatch.undo()
    monkeypatch.setattr(identity, "resolve", counted)
    first.cancel()
    got = await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    assert first.cancelled() and len({w.user_id for w in got}) == 1 and got[0].user_id is not None
    assert reads.count(other.key) == 1  # one of the waiters took over, the others shared its read
