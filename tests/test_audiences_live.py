"""Audiences end to end: real users, groups, permissions, sessions and receiver tokens in the
database two real daphne processes share; real WebSocket receivers on both; broadcasts through
the API. Every receiver gets exactly what its audiences contain, live, on resume and as the
current announcement; membership changes take effect within 5 s on both processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.support import AdminSession, Client, SseClient, create_token, http_request, manage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

# Permissions the worlds hand out (both exist after migrate).
PERMS = ["broadcaster.send_broadcast", "auth.view_group"]

# Makes the users, groups, permissions, a logged-in session per user (what login() stores) and
# a receiver token for some; prints {username: {"session": key, "token": secret or null}}.
WORLD = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import Group, Permission, User
from django.contrib.sessions.backends.db import SessionStore
from broadcaster.models import ReceiverToken
spec = json.loads(SPEC)
groups = {name: Group.objects.get_or_create(name=name)[0] for name in spec["groups"]}
def perm(name):
    app, code = name.split(".")
    return Permission.objects.get(content_type__app_label=app, codename=code)
for name, g in spec["group_perms"].items():
    groups[name].permissions.set([perm(p) for p in g])
out = {}
for u in spec["users"]:
    user = User(username=u["name"], is_staff=u["staff"], is_active=u["active"], is_superuser=u["superuser"])
    user.set_unusable_password()  # (hashing a password is a third of a second each)
    user.save()
    user.groups.set([groups[g] for g in u["groups"]])
    user.user_permissions.set([perm(p) for p in u["perms"]])
    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    secret = None
    if u["token"]:
        token = ReceiverToken(user=user)
        secret = token.issue_secret()
        token.save()
    out[u["name"]] = {"session": s.session_key, "token": secret}
print(json.dumps(out))
"""


@dataclass
class World:
    """What the database holds, as the test models it (independently of the app's code)."""

    prefix: str
    users: list[dict[str, Any]]
    groups: list[str]
    group_perms: dict[str, list[str]]
    credentials: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def memberships(self, name: str | None) -> set[str]:
        """The audiences a receiver of user `name` (None: anonymous) belongs to."""
        if name is None:
            return {"everyone"}
        u = next(u for u in self.users if u["name"] == name)
        if not u["active"]:
            return {"everyone"}
        found = {"everyone", "authenticated", f"user:{name}"} | {f"group:{g}" for g in u["groups"]}
        if u["staff"]:
            found.add("staff")
        perms = set(u["perms"]) | {p for g in u["groups"] for p in self.group_perms.get(g, [])}
        if u["superuser"]:
            perms = set(PERMS)
        return found | {f"perm:{p}" for p in perms}

    def audiences(self) -> list[str]:
        return (["everyone", "authenticated", "staff"] + [f"user:{u['name']}" for u in self.users]
                + [f"group:{g}" for g in self.groups] + [f"perm:{p}" for p in PERMS])  # fmt: skip


@st.composite
def worlds(draw: Any) -> World:
    prefix = f"w{time.monotonic_ns() % 10**9}"
    groups = [f"{prefix}-g{i}" for i in range(draw(st.integers(1, 3)))]
    users = []
    for i in range(draw(st.integers(2, 6))):
        users.append({
            "name": f"{prefix}-u{i}",
            "staff": draw(st.booleans()),
            "active": draw(st.integers(0, 3)) > 0,  # mostly active
            "superuser": draw(st.integers(0, 5)) == 0,
            "groups": draw(st.lists(st.sampled_from(groups), unique=True, max_size=len(groups))),
            "perms": draw(st.lists(st.sampled_from(PERMS), unique=True, max_size=1)),
            "token": draw(st.booleans()),
        })  # fmt: skip
    group_perms = {g: draw(st.lists(st.sampled_from(PERMS), unique=True, max_size=1)) for g in groups}
    return World(prefix=prefix, users=users, groups=groups, group_perms=group_perms)


def make_world(world: World, env: dict[str, str]) -> None:
    spec = {"groups": world.groups, "group_perms": world.group_perms, "users": world.users}
    done = manage(["shell", "-c", f"SPEC = {json.dumps(json.dumps(spec))}\n{WORLD}"], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    world.credentials = json.loads(done.stdout.strip().splitlines()[-1])


def ids(client: Client) -> list[str]:
    """Ids of the messages a client got, in order (a batch's one by one)."""
    return [f["id"] for f in _messages(client)]


async def post(port: int, token: str, text: str, audience: Any) -> dict[str, Any]:
    body = json.dumps({"text": text, "audience": audience}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    answer = await http_request(port, "POST", "/api/broadcasts/", body=body, headers=headers)
    assert answer.status == 201, answer.body
    return answer.json()


@dataclass
class Receiver:
    user: str | None
    how: str  # "session", "token" or "anonymous"
    client: Client
    # Its transport: Client (WebSocket) or SseClient (Server-Sent Events).
    kind: type[Client] = Client


def headers_for(world: World, user: str | None, how: str) -> dict[str, str]:
    if user is None:
        return {}
    creds = world.credentials[user]
    if how == "token":
        return {"Authorization": f"Bearer {creds['token']}"}
    return {"Cookie": f"sessionid={creds['session']}"}


@pytest.fixture
def two_servers(daphne, env_for, redis_url):
    env = env_for(redis_url)
    extra = {"BROADCAST_API_RATE_LIMIT": "100000"}
    servers = [daphne(**extra), daphne(**extra)]
    return servers, create_token(f"audiences-{uuid.uuid4().hex[:8]}", env=env), env, []


# Each example builds a world through manage.py and connects up to 13 receivers (about 5 s);
# a failure is reported as found, not shrunk (shrinking would rebuild worlds for minutes).
@pytest.mark.timeout(400)
@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(world=worlds(), data=st.data())
async def test_every_receiver_gets_exactly_what_its_audiences_contain(two_servers, world, data):
    """Random users, groups, permissions, sessions and tokens; receivers on two processes, each
    on a random transport (WebSocket or SSE); random audiences: live, on resume and as the
    current announcement, each receiver gets the broadcasts whose audience contains it, nothing
    else, none twice."""
    servers, token, env, log = two_servers
    opened: list[Client] = []
    try:
        await _example(servers, token, env, world, data, opened, log)
    finally:
        # A failed example must not leave receivers for the next one to count.
        for client in opened:
            await client.close()


async def _example(servers: list[Any], token: str, env: dict[str, str], world: World, data: Any,
                   opened: list[Client], log: list[tuple[str, set[str]]]) -> None:  # fmt: skip
    """`log`: every broadcast of the earlier examples, with its audience."""
    make_world(world, env)
    # A new client's first frame is the current announcement: this makes it one for everyone.
    # (A process that has not had it live yet answers a new client from memory with the one
    # before, then sends this one live: see `earlier` below.)
    start = (await post(servers[1].port, token, f"{world.prefix} start", "everyone"))["id"]
    receivers: list[Receiver] = []
    transports = st.sampled_from([Client, SseClient])
    for user, how in [(None, "anonymous"), (None, "anonymous")]:
        kind = data.draw(transports, label="anonymous transport")
        receivers.append(Receiver(user, how, _track(opened, servers[len(receivers) % 2].ws, kind), kind))
    for u in world.users:
        hows = ["session", "token"] if world.credentials[u["name"]]["token"] else ["session"]
        for how in data.draw(st.lists(st.sampled_from(hows), min_size=0, max_size=2), label=u["name"]):
            kind = data.draw(transports, label=f"{u['name']} transport")
            client = _track(opened, servers[len(receivers) % 2].ws, kind)
            receivers.append(Receiver(u["name"], how, client, kind))
    for r in receivers:
        await r.client.connect(additional_headers=headers_for(world, r.user, r.how))
    # Everyone connected (and counted) on both processes before anything is sent.
    await asyncio.to_thread(servers[0].wait_for_clients, len(receivers))
    universe = world.audiences()
    audience_lists = data.draw(st.lists(st.lists(st.sampled_from(universe), min_size=1, max_size=3),
                                        min_size=1, max_size=12), label="audiences")  # fmt: skip
    sent = []
    for i, audience in enumerate(audience_lists):
        answer = await post(servers[i % 2].port, token, f"{world.prefix} #{i}", audience)
        sent.append((answer["id"], set(audience)))
    end = (await post(servers[0].port, token, f"{world.prefix} end", "everyone"))["id"]

    def expected(r: Receiver) -> list[str]:
        mine = world.memberships(r.user)
        return [start] + [id for id, audience in sent if audience & mine] + [end]

    def earlier(r: Receiver) -> set[str]:
        """Earlier examples' broadcasts that are for it (its current announcement, if a
        process answered before it had `start`)."""
        mine = world.memberships(r.user)
        return {id for id, audience in log if audience & mine}

    log.extend([(start, {"everyone"}), *sent, (end, {"everyone"})])
    for r in receivers:
        await r.client.wait_for(lambda c: end in ids(c), timeout=20, what=f"the end marker at {r.user}")
        got = ids(r.client)
        before, after = got[: got.index(start)], got[got.index(start) :]
        # Before `start`: the current announcement a process answered from memory, then what it
        # had not yet sent live of the earlier examples (a process lagging on a loaded machine),
        # each for it, once, in the order sent.
        order = [id for id, _ in log]
        assert set(before) <= earlier(r) and before == sorted(set(before), key=order.index), (
            r.user,
            r.how,
            before,
        )
        assert after == expected(r), (r.user, r.how, r.kind.__name__, sorted(world.memberships(r.user)))
    # Resuming from before its first message, through the other process: the same again (history
    # holds them all; what was not for it is left out).
    for r in receivers:
        await r.client.close()
    for i, r in enumerate(receivers):
        first = next(f for f in _messages(r.client) if f["id"] == start)
        resumed = _track(
            opened, servers[(i + 1) % 2].ws + f"?since={first['seq'] - 1}&epoch={first['epoch']}", r.kind
        )
        await resumed.connect(additional_headers=headers_for(world, r.user, r.how))
        await resumed.wait_for(
            lambda c: end in ids(c), timeout=20, what=f"the resumed end marker at {r.user}"
        )
        assert ids(resumed) == expected(r), (r.user, r.how, r.kind.__name__)
        await resumed.close()
    # The current announcement for a new client: the newest broadcast that is for it.
    last_audience = data.draw(st.lists(st.sampled_from(universe), min_size=1, max_size=2), label="last")
    last = (await post(servers[1].port, token, f"{world.prefix} last", last_audience))["id"]
    log.append((last, set(last_audience)))
    for i, r in enumerate(receivers):
        fresh = _track(opened, servers[i % 2].ws, r.kind)
        await fresh.connect(additional_headers=headers_for(world, r.user, r.how))
        member = bool(set(last_audience) & world.memberships(r.user))
        want = last if member else end
        await fresh.wait_for(lambda c, want=want: want in ids(c), timeout=20, what="the current announcement")
        # A process that has not had `last` live yet answers from memory with `end`, then sends
        # `last` live: both are for a member. A non-member is never sent `last`.
        assert ids(fresh) in ([want], [end, want]) if member else ids(fresh) == [end], (r.user, last_audience)
        await fresh.close()


def _messages(client: Client) -> list[dict[str, Any]]:
    found = []
    for f in client.frames:
        if f["type"] == "message":
            found.append(f)
        elif f["type"] == "batch":
            found.extend(f["messages"])
    return found


def _track(opened: list[Client], url: str, kind: type[Client] = Client) -> Client:
    client = kind(url)
    opened.append(client)
    return client


CHANGE = """
import time
from django.contrib.auth.models import Group, User
user = User.objects.get(username=NAME)
group = Group.objects.get(name=GROUP)
getattr(user.groups, ACTION)(group)
print(time.time())
"""


def change_membership(env: dict[str, str], name: str, group: str, action: str) -> float:
    """`user.groups.add/remove(group)` through the ORM in another process; when it committed."""
    code = f"NAME, GROUP, ACTION = {name!r}, {group!r}, {action!r}\n{CHANGE}"
    done = manage(["shell", "-c", code], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip().splitlines()[-1])


async def took_effect(servers: list[Any], token: str, clients: list[Client], audience: str, *,
                      reached: list[bool], since: float) -> float:  # fmt: skip
    """Send probes for `audience`, each followed by a marker for everyone, until each client gets
    the probe exactly when `reached` says; return how long after `since` that was. Every probe
    after it must hold too."""
    deadline = since + 10
    settled_at = None
    checks_after = 0
    n = 0
    while checks_after < 2:
        assert time.time() < deadline, "the change did not take effect within 10 s"
        n += 1
        probe = (await post(servers[n % 2].port, token, f"probe {n}", audience))["id"]
        marker = (await post(servers[(n + 1) % 2].port, token, f"marker {n}", "everyone"))["id"]
        for c in clients:
            await c.wait_for(lambda c, m=marker: m in ids(c), timeout=10, what="a marker")
        got = [probe in ids(c) for c in clients]
        if settled_at is None and got == reached:
            settled_at = time.time()
        elif settled_at is not None:
            assert got == reached, f"probe {n} after the change took effect: {got}"
            checks_after += 1
    return settled_at - since


async def test_group_removal_and_logout_take_effect_within_5_s_on_both_processes(two_servers):
    """A user logged in through the admin form twice, with tabs on two processes: removed from
    a group, no tab gets that group's broadcasts within 5 s; added back, they do again; after
    a logout, that session's tabs (on both processes) hear only what is for everyone, while the
    other session's tab goes on hearing what is for the user; deactivated, none of them does."""
    servers, token, env, _ = two_servers
    setup = ("from django.contrib.auth.models import Group, User\n"
             "u = User.objects.create_user('ch-ann', password='pw-ann-1', is_staff=True)\n"
             "u.groups.add(Group.objects.create(name='ch-ops'))")  # fmt: skip
    done = manage(["shell", "-c", setup], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    first = await asyncio.to_thread(lambda: AdminSession(servers[0].http).log_in("ch-ann", "pw-ann-1"))
    second = await asyncio.to_thread(lambda: AdminSession(servers[1].http).log_in("ch-ann", "pw-ann-1"))
    tabs = [Client(servers[0].ws), Client(servers[1].ws), Client(servers[1].ws)]
    for tab, session in zip(tabs, [first, first, second], strict=True):
        await tab.connect(additional_headers=session.headers())
    try:
        await asyncio.to_thread(servers[0].wait_for_clients, 3)
        await took_effect(servers, token, tabs, "group:ch-ops", reached=[True] * 3, since=time.time())
        removed = change_membership(env, "ch-ann", "ch-ops", "remove")
        took = await took_effect(servers, token, tabs, "group:ch-ops", reached=[False] * 3, since=removed)
        print(f"group removal took effect after {took:.2f} s")
        assert took <= 5
        added = change_membership(env, "ch-ann", "ch-ops", "add")
        took = await took_effect(servers, token, tabs, "group:ch-ops", reached=[True] * 3, since=added)
        print(f"group addition took effect after {took:.2f} s")
        assert took <= 5
        logged_out = time.time()
        await asyncio.to_thread(first.log_out)
        took = await took_effect(servers, token, tabs, "user:ch-ann", reached=[False, False, True],
                                 since=logged_out)  # fmt: skip
        print(f"logout took effect after {took:.2f} s")
        assert took <= 5
        # Deactivated (an ORM save in another process): the other session's tab hears only
        # what is for everyone, on the other process too.
        code = ("import time\nfrom django.contrib.auth.models import User\n"
                "u = User.objects.get(username='ch-ann')\nu.is_active = False\nu.save()\n"
                "print(time.time())")  # fmt: skip
        done = manage(["shell", "-c", code], env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        deactivated = float(done.stdout.strip().splitlines()[-1])
        took = await took_effect(servers, token, tabs, "authenticated", reached=[False, False, False],
                                 since=deactivated)  # fmt: skip
        print(f"deactivation took effect after {took:.2f} s")
        assert took <= 5
    finally:
        for tab in tabs:
            await tab.close()


# Run before the ORM code of the tests below (in `manage.py shell`): the models, the permission
# they hand out, and a receiver token maker.
ORM = """
import json, time
from django.contrib.auth.models import Group, Permission, User
from broadcaster.models import ReceiverToken
view_group = Permission.objects.get(content_type__app_label="auth", codename="view_group")
def token(user):
    t = ReceiverToken(user=user)
    secret = t.issue_secret()
    t.save()
    return secret
"""
VIEW_GROUP = "perm:auth.view_group"


def orm(env: dict[str, str], code: str) -> str:
    """Run ORM `code` in another process (`manage.py shell`, with Django's signals); the last
    line it printed."""
    done = manage(["shell", "-c", ORM + code], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def changed(env: dict[str, str], code: str) -> float:
    """`orm(code)`; when it committed."""
    return float(orm(env, code + "\nprint(time.time())"))


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def ann_and_bob(servers: list[Any], env: dict[str, str], prefix: str, setup: str) -> list[Client]:
    """Users `ann` (<prefix>-ann, staff, password pw) and `bob` (<prefix>-bob), then `setup`'s
    ORM code; ann logs in through the admin form. Receivers of her session on the first process,
    of her token on the second and of bob's token on the first: connected and counted."""
    users = (f"ann = User.objects.create_user('{prefix}-ann', password='pw', is_staff=True)\n"
             f"bob = User.objects.create_user('{prefix}-bob')\n")  # fmt: skip
    secrets = json.loads(orm(env, f"{users}{setup}\nprint(json.dumps([token(ann), token(bob)]))"))
    session = await asyncio.to_thread(lambda: AdminSession(servers[0].http).log_in(f"{prefix}-ann", "pw"))
    clients = [Client(servers[0].ws), Client(servers[1].ws), Client(servers[0].ws)]
    for client, headers in zip(clients, [session.headers(), *map(bearer, secrets)], strict=True):
        await client.connect(additional_headers=headers)
    await asyncio.to_thread(servers[0].wait_for_clients, len(clients))
    return clients


async def refused(port: int, token: str, audience: str) -> str:
    """Why the API refuses a broadcast for `audience` (a 400: nothing was sent)."""
    body = json.dumps({"text": "refused", "audience": audience}).encode()
    headers = {**bearer(token), "Content-Type": "application/json"}
    answer = await http_request(port, "POST", "/api/broadcasts/", body=body, headers=headers)
    assert answer.status == 400, answer.body
    return str(answer.json()["error"])


def heard_since(client: Client, n: int) -> set[str]:
    """What a client got after its first `n` messages: took_effect's "probe"s and "marker"s."""
    return {m["text"].split(" ")[0] for m in _messages(client)[n:]}


async def test_user_deletion_takes_effect_within_5_s_on_both_processes(two_servers):
    """ann and bob in ud-ops, and an anonymous receiver. ann deleted in another process: within
    5 s her session's and her token's receivers (on both processes) get nothing more for the
    group, while bob's does and everyone's reaches all four; sending to her is refused; a new
    user of her name is heard by its own receiver, never by her old ones."""
    servers, token, env, _ = two_servers
    ops = "Group.objects.create(name='ud-ops').user_set.add(ann, bob)"
    clients = [*await ann_and_bob(servers, env, "ud", ops), await Client(servers[1].ws).connect()]
    try:
        await asyncio.to_thread(servers[0].wait_for_clients, 4)
        await took_effect(servers, token, clients, "user:ud-ann", reached=[True, True, False, False],
                          since=time.time())  # fmt: skip
        await took_effect(servers, token, clients, "group:ud-ops", reached=[True, True, True, False],
                          since=time.time())  # fmt: skip
        deleted = changed(env, "User.objects.get(username='ud-ann').delete()")
        took = await took_effect(servers, token, clients, "group:ud-ops", reached=[False, False, True, False],
                                 since=deleted)  # fmt: skip
        print(f"user deletion took effect after {took:.2f} s")
        assert took <= 5
        settled = [len(_messages(c)) for c in clients[:2]]
        error = await refused(servers[1].port, token, "user:ud-ann")
        assert error == "No user 'ud-ann' exists: nothing was sent."
        # A new ud-ann, with a receiver of her own.
        secret = orm(env, "print(token(User.objects.create_user('ud-ann')))")
        clients.append(await Client(servers[1].ws).connect(additional_headers=bearer(secret)))
        await asyncio.to_thread(servers[0].wait_for_clients, 5)
        await took_effect(servers, token, clients, "user:ud-ann", reached=[False, False, False, False, True],
                          since=time.time())  # fmt: skip
        assert [heard_since(c, n) for c, n in zip(clients[:2], settled, strict=True)] == [{"marker"}] * 2
    finally:
        for client in clients:
            await client.close()


async def test_permission_changes_take_effect_within_5_s_on_both_processes(two_servers):
    """bob has auth.view_group; ann has not. Within 5 s on both processes, ann's receivers get
    what is for perm:auth.view_group once she is given it, and not once it is taken back; the
    same through pm-viewers, a group that has it, when she joins it and when it loses it. bob's
    receiver gets every such broadcast throughout."""
    servers, token, env, _ = two_servers
    setup = ("Group.objects.create(name='pm-viewers').permissions.add(view_group)\n"
             "bob.user_permissions.add(view_group)")  # fmt: skip
    clients = await ann_and_bob(servers, env, "pm", setup)
    try:
        await took_effect(servers, token, clients, VIEW_GROUP, reached=[False, False, True],
                          since=time.time())  # fmt: skip
        steps = [("permission given", "ann.user_permissions.add(view_group)", True),
                 ("permission removed", "ann.user_permissions.remove(view_group)", False),
                 ("group with the permission joined", "ann.groups.add(viewers)", True),
                 ("group permission removed", "viewers.permissions.remove(view_group)", False)]  # fmt: skip
        for what, code, member in steps:
            at = changed(env, "ann = User.objects.get(username='pm-ann')\n"
                              f"viewers = Group.objects.get(name='pm-viewers')\n{code}")  # fmt: skip
            took = await took_effect(servers, token, clients, VIEW_GROUP, reached=[member, member, True],
                                     since=at)  # fmt: skip
            print(f"{what}: took effect after {took:.2f} s")
            assert took <= 5
    finally:
        for client in clients:
            await client.close()


async def test_group_deletion_takes_effect_within_5_s_on_both_processes(two_servers):
    """ann has auth.view_group through gd-ops only; bob has it himself. gd-ops deleted in another
    process: within 5 s ann's receivers (on both processes) get nothing more for that permission,
    while bob's does; sending to gd-ops is refused; a new gd-ops with bob in it is heard by bob,
    never by ann's receivers."""
    servers, token, env, _ = two_servers
    setup = ("ops = Group.objects.create(name='gd-ops')\nops.permissions.add(view_group)\n"
             "ann.groups.add(ops)\nbob.user_permissions.add(view_group)")  # fmt: skip
    clients = await ann_and_bob(servers, env, "gd", setup)
    try:
        await took_effect(servers, token, clients, VIEW_GROUP, reached=[True, True, True], since=time.time())
        await took_effect(servers, token, clients, "group:gd-ops", reached=[True, True, False],
                          since=time.time())  # fmt: skip
        deleted = changed(env, "Group.objects.get(name='gd-ops').delete()")
        took = await took_effect(servers, token, clients, VIEW_GROUP, reached=[False, False, True],
                                 since=deleted)  # fmt: skip
        print(f"group deletion took effect after {took:.2f} s")
        assert took <= 5
        settled = [len(_messages(c)) for c in clients[:2]]
        error = await refused(servers[0].port, token, "group:gd-ops")
        assert error == "No group 'gd-ops' exists: nothing was sent."
        made = changed(env, "bob = User.objects.get(username='gd-bob')\n"
                            "Group.objects.create(name='gd-ops').user_set.add(bob)")  # fmt: skip
        took = await took_effect(servers, token, clients, "group:gd-ops", reached=[False, False, True],
                                 since=made)  # fmt: skip
        print(f"a new group of that name took effect after {took:.2f} s")
        assert took <= 5
        assert [heard_since(c, n) for c, n in zip(clients[:2], settled, strict=True)] == [{"marker"}] * 2
    finally:
        for client in clients:
            await client.close()
