"""The app in someone else's project: docs/EMBEDDING.md applied to a fresh `startproject`.

The blocks of docs/EMBEDDING.md marked `<!-- embed: ... -->` are applied as written, to a project
created outside this repository, with this checkout installed by pip (not imported from the
checkout): templates, static files and migrations must come from the installed package.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT, LineReader, free_port, wait_until

pytestmark = pytest.mark.browser

EMBED = re.compile(r"<!-- embed: (append|replace|write) (\S+) -->\n```\w*\n(.*?)```", re.S)


def recipe() -> list[tuple[str, str, str]]:
    """(action, file, text) of each `embed:` block of docs/EMBEDDING.md, in order."""
    blocks = EMBED.findall((ROOT / "docs" / "EMBEDDING.md").read_text())
    assert len(blocks) >= 5, "docs/EMBEDDING.md lost its embed: blocks"
    return blocks


@dataclass
class Host:
    """A fresh Django project with the app installed as the docs say."""

    root: Path
    env: dict[str, str]

    def manage(self, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def host(tmp_path: Path, redis_url: str) -> Host:
    site_packages = tmp_path / "site-packages"
    # Built from a copy of this checkout like any pip install (setuptools keeps a build/ folder in
    # the source, which must not end up in the checkout); dependencies are the suite's own (pinned).
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", ".hypothesis", ".ruff_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site_packages),
            str(source),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    root = tmp_path / "host"
    root.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "BROADCAST_", "REDIS_", "DATABASE_"))
    }
    env.update(PYTHONPATH=str(site_packages), REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "hostsite", str(root)],
        env=env,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    package = root / "hostsite"
    for action, name, text in recipe():
        target = root / name if name.startswith("templates/") else package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if action == "append":
            target.write_text(target.read_text() + "\n" + text)
        else:
            target.write_text(text)
    # The host's own page, beside the ones the docs add.
    (package / "urls.py").write_text(
        (package / "urls.py").read_text()
        + (
            "\nfrom django.http import HttpResponse\n\n"
            "urlpatterns += [path('hello/', lambda request: HttpResponse('Hello from the host'))]\n"
            # A view that fails after send(), inside its transaction.
            "\nfrom django.contrib.auth.models import Group\nfrom django.db import transaction\n"
            "import broadcaster\n\n\ndef fails(request):\n    with transaction.atomic():\n"
            "        Group.objects.create(name='never')\n        broadcaster.send('Never sent')\n"
            "        raise RuntimeError('the view failed after send()')\n\n\n"
            "urlpatterns += [path('fails/', fails)]\n"
        )
    )
    made = Host(root=root, env=env)
    where = made.manage("shell", "-c", "import broadcaster; print(broadcaster.__file__)")
    assert where.stdout.strip().splitlines()[-1].startswith(str(site_packages)), where
    return made


class HostServer:
    """daphne serving the host project on a loopback port (stopped and started again by tests)."""

    def __init__(self, host: Host, log: Path) -> None:
        self.host, self.log, self.port = host, log, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "hostsite.asgi:application",
                ],
                cwd=self.host.root,
                env=self.host.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._up, timeout=30, what="the host project under daphne")

    def _up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/broadcasts/health/", timeout=2) as resp:
            return resp.status == 200

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None


@pytest.fixture
def served(host: Host, tmp_path: Path) -> Iterator[HostServer]:
    migrate = host.manage("migrate", "--noinput", "-v", "0")
    assert migrate.returncode == 0, migrate.stderr
    host.env["DJANGO_SUPERUSER_PASSWORD"] = "host-admin-password"
    superuser = host.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "a@example.com")
    assert superuser.returncode == 0, superuser.stderr
    server = HostServer(host, tmp_path / "host-daphne.log")
    server.start()
    yield server
    server.stop()


def test_fresh_project_passes_the_system_checks(host: Host) -> None:
    """The documented settings leave nothing for the app's system checks to report."""
    result = host.manage("check")
    assert (result.returncode, result.stdout.strip()) == (
        0,
        "System check identified no issues (0 silenced).",
    )


def test_checks_name_what_a_host_forgot(host: Host) -> None:
    """Without daphne, the ASGI wrapper and a layer, `check` names each (not a traceback)."""
    settings = host.root / "hostsite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + (
            '\nINSTALLED_APPS = [a for a in INSTALLED_APPS if a != "daphne"]\n'
            'CHANNEL_LAYERS = {}\nASGI_APPLICATION = "hostsite.plain_asgi.application"\n'
        )
    )
    (host.root / "hostsite" / "plain_asgi.py").write_text(
        "from django.core.asgi import get_asgi_application\n\napplication = get_asgi_application()\n"
    )
    result = host.manage("check")
    found = sorted(set(re.findall(r"\(broadcaster\.([EW]\d{3})\)", result.stderr + result.stdout)))
    assert (result.returncode, found) == (1, ["E004", "W003", "W004"]), result.stderr


async def test_banner_styles_levels_and_goes_when_retracted_or_expired(
    served: HostServer, browser: object
) -> None:
    """The banner says a critical announcement's level in words and in its colours, interrupts
    a screen reader for it, and goes away when it is retracted, or when one expires."""
    from playwright.async_api import expect

    host, base = served.host, f"http://127.0.0.1:{served.port}"
    page = await browser.new_page()  # type: ignore[attr-defined]
    await page.goto(base + "/")
    banner = page.locator(".broadcast-banner")
    status = page.get_by_role("status", name="Announcement")
    assert host.manage("broadcast", "-m", "Plain news").returncode == 0
    await expect(status).to_have_text("Plain news", timeout=15_000)
    box = "e => getComputedStyle(e.shadowRoot.querySelector('.banner')).backgroundColor"
    plain = await banner.evaluate(box)

    sent = host.manage("broadcast", "--level", "critical", "-m", "Evacuate floor 3")
    assert sent.returncode == 0, sent.stderr
    await expect(status).to_have_text("Critical: Evacuate floor 3", timeout=15_000)
    await expect(status).to_have_attribute("aria-live", "assertive")
    assert await banner.evaluate(box) != plain
    id = await banner.get_attribute("data-id")
    retracted = host.manage("broadcast", "--retract", str(id))
    assert retracted.returncode == 0, retracted.stderr
    await expect(banner).to_be_hidden(timeout=15_000)

    sent = host.manage("broadcast", "--level", "warning", "--expires-in", "3", "-m", "Coffee in the kitchen")
    assert sent.returncode == 0, sent.stderr
    await expect(status).to_have_text("Warning: Coffee in the kitchen", timeout=15_000)
    await expect(status).to_have_attribute("aria-live", "polite")
    await expect(banner).to_be_visible()
    await expect(banner).to_be_hidden(timeout=15_000)  # on its timer
    await page.close()


async def test_banner_shows_the_hosts_console_broadcasts(served: HostServer, browser: object) -> None:
    """A host page with {% broadcast_banner %} (strict CSP) shows what the host's `manage.py
    broadcast` sends, resumes after the server restarts, and leaves the host's pages and admin working."""
    from playwright.async_api import expect

    host, base = served.host, f"http://127.0.0.1:{served.port}"
    page = await browser.new_page()  # type: ignore[attr-defined]
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(base + "/")
    heading_font = await page.locator("h1").evaluate("e => getComputedStyle(e).fontFamily")
    banner = page.locator(".broadcast-banner")
    await expect(banner).to_be_hidden()

    sent = host.manage("broadcast", stdin="Deploy at 17:00\n")
    assert sent.returncode == 0, sent.stderr
    status = page.get_by_role("status", name="Announcement")
    await expect(status).to_contain_text("Deploy at 17:00", timeout=15_000)
    await expect(banner).to_be_visible()
    # The banner's stylesheet stays in its shadow root: the host's own text is untouched.
    assert await page.locator("h1").evaluate("e => getComputedStyle(e).fontFamily") == heading_font
    assert (
        await banner.evaluate("e => getComputedStyle(e.shadowRoot.querySelector('.banner')).display")
        == "flex"
    )
    if os.environ.get("BROADCAST_SCREENSHOT"):
        await page.set_viewport_size({"width": 900, "height": 260})
        await page.screenshot(path=os.environ["BROADCAST_SCREENSHOT"])

    # A page opened now shows the current announcement at once, and fits a phone's width.
    phone = await browser.new_page(viewport={"width": 360, "height": 640})  # type: ignore[attr-defined]
    await phone.goto(base + "/")
    await expect(phone.get_by_role("status", name="Announcement")).to_contain_text(
        "Deploy at 17:00", timeout=15_000
    )
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 360
    await phone.keyboard.press("Tab")  # the first focusable element of the page is the banner's button
    await phone.keyboard.press("Escape")
    await expect(phone.locator(".broadcast-banner")).to_be_hidden()
    await phone.close()

    # Keyboard: focus on Dismiss, Enter hides it.
    await page.get_by_role("button", name="Dismiss announcement").focus()
    await page.keyboard.press("Enter")
    await expect(banner).to_be_hidden()

    # The server restarts; what was sent meanwhile is shown once the banner has reconnected.
    served.stop()
    assert host.manage("broadcast", stdin="Deploy moved to 18:00\n").returncode == 0
    served.start()
    await expect(status).to_contain_text("Deploy moved to 18:00", timeout=30_000)
    await expect(banner).to_be_visible()
    assert blocked == []

    # The host's own pages and its admin still work beside the app.
    hello = await page.request.get(base + "/hello/")
    assert (hello.status, await hello.text()) == (200, "Hello from the host")
    await page.goto(base + "/admin/")
    await page.fill("#id_username", "admin")
    await page.fill("#id_password", "host-admin-password")
    await page.press("#id_password", "Enter")
    await expect(page.get_by_role("link", name="Broadcast records")).to_be_visible()
    operator = await page.request.get(base + "/broadcasts/operator/")
    assert operator.status == 200 and "Operator" in await operator.text()


def test_host_commands_and_api_work_unchanged(served: HostServer) -> None:
    """In the host project, `create_publish_token` makes a token the API under the host's
    prefix takes, and the host's `manage.py listen` prints what the API sent."""
    host, base = served.host, f"http://127.0.0.1:{served.port}"
    made = host.manage("create_publish_token", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[1].strip()
    listener = subprocess.Popen([sys.executable, "manage.py", "listen", f"ws://127.0.0.1:{served.port}/ws/broadcast/"],
                                cwd=host.root, env=host.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)  # fmt: skip
    try:
        lines = LineReader(listener.stdout)
        lines.wait_for(lambda line: line.startswith("Connected"), timeout=20, what="listen to connect")
        request = urllib.request.Request(base + "/broadcasts/api/broadcasts/", method="POST",
                                         data=json.dumps({"text": "From the host's API"}).encode(),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert (response.status, sorted(json.loads(response.read()))) == (
                201,
                ["audience", "clients", "expires", "id", "level", "seq", "time"],
            )
        lines.wait_for(lambda line: line.endswith("From the host's API"), timeout=15, what="the broadcast")
    finally:
        listener.terminate()
        listener.wait(timeout=10)


HOST_PEOPLE = """
from django.contrib.auth.models import Group, User
ops, _ = Group.objects.get_or_create(name="ops")
for name, email in (("alice", "alice@acme.example"), ("bob", "bob@other.example")):
    user = User.objects.create_user(name, email, "pw-" + name, is_staff=True)
alice = User.objects.get(username="alice")
alice.groups.add(ops)
"""


async def signed_in_banner(browser: object, base: str, username: str | None) -> tuple[object, list[str]]:
    """The host's page with the banner in a browser context of its own, signed in through the
    admin's login form as `username` (None: anonymous); with every frame its socket received."""
    context = await browser.new_context()  # type: ignore[attr-defined]
    page = await context.new_page()
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    if username is not None:
        await page.goto(base + "/admin/login/?next=/")
        await page.fill("#id_username", username)
        await page.fill("#id_password", "pw-" + username)
        await page.click("input[type=submit]")
    await page.goto(base + "/")
    return page, frames


async def test_banner_hears_only_what_is_for_its_signed_in_user(served: HostServer, browser: object) -> None:
    """The Audiences section as written: in the host project, alice (in ops, at acme.example),
    bob (at other.example) and an anonymous visitor, signed in through the admin's login form,
    each get exactly the group, user and host-kind (`tenant:`) broadcasts meant for them, in
    any frame; after a change Django sends no signal for, `audiences_changed` takes effect."""
    import asyncio
    import time

    from playwright.async_api import expect

    host, base = served.host, f"http://127.0.0.1:{served.port}"
    made = host.manage("shell", "-c", HOST_PEOPLE)
    assert made.returncode == 0, made.stderr
    people = {who: await signed_in_banner(browser, base, who) for who in ("alice", "bob", None)}

    async def send(text: str, *audiences: str) -> None:
        args = ["broadcast", "-m", text, *(a for audience in audiences for a in ("--audience", audience))]
        done = await asyncio.to_thread(host.manage, *args)
        assert done.returncode == 0, done.stderr

    async def all_show(text: str) -> None:
        for page, _ in people.values():
            status = page.get_by_role("status", name="Announcement")  # type: ignore[attr-defined]
            await expect(status).to_have_text(text, timeout=15_000)

    await send("Hello all")
    await all_show("Hello all")  # every banner is connected
    await send("Acme only", "tenant:acme.example")
    await send("Ops only", "group:ops")
    await send("Bob only", "user:bob")
    await send("Acme or bob", "tenant:acme.example", "user:bob")
    await send("Everyone again")
    await all_show("Everyone again")  # in order: each banner has had every frame before it
    expected = {
        "alice": ["Acme only", "Ops only", "Acme or bob"],
        "bob": ["Bob only", "Acme or bob"],
        None: [],
    }
    for who, (_, frames) in people.items():
        heard = [
            t for t in ("Acme only", "Ops only", "Bob only", "Acme or bob") if any(t in f for f in frames)
        ]
        assert heard == expected[who], (who, frames)
        assert not any("audience" in f for f in frames), frames  # nobody is told who else was addressed

    # bob moves to acme behind Django's back (no signal), then the host says so. Sent through
    # the API from now on: a send every 0.2 s or so times the change, where a command's start could not.
    made = host.manage("create_publish_token", "ci")
    assert made.returncode == 0, made.stderr
    token = made.stdout.splitlines()[1].strip()

    def post(text: str) -> None:
        body = json.dumps({"text": text, "audience": "tenant:acme.example"}).encode()
        request = urllib.request.Request(base + "/broadcasts/api/broadcasts/", method="POST", data=body,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201

    moved = host.manage("shell", "-c", "import broadcaster; from django.contrib.auth.models import User; "
                        "User.objects.filter(username='bob').update(email='bob@acme.example'); "
                        "broadcaster.audiences_changed(User.objects.get(username='bob'))")  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    started = time.monotonic()
    alice_status, bob_status = (people[who][0].get_by_role("status", name="Announcement")  # type: ignore[attr-defined]
                                for who in ("alice", "bob"))  # fmt: skip
    for n in range(25):  # (under the API's 30 a minute)
        await asyncio.to_thread(post, f"Acme {n}")
        await expect(alice_status).to_have_text(f"Acme {n}", timeout=15_000)
        try:  # bob's banner, once alice's has it: a moment later at most
            await expect(bob_status).to_have_text(f"Acme {n}", timeout=200)
            break
        except AssertionError:
            continue
    took = time.monotonic() - started
    print(f"audiences_changed took effect in {took:.2f} s")
    await expect(bob_status).to_have_text(f"Acme {n}", timeout=1)
    assert took < 5, took


SCRIPT = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostsite.settings")
import django
django.setup()
import broadcaster
print(broadcaster.send("From a script").seq)
"""


async def test_send_from_code_in_a_host_project(served: HostServer) -> None:
    """The "Send from your code" section as written: a view that saves a model and sends in
    one transaction, a view that fails after send() (nothing sent, no row), an async view, a
    post_save handler, a management command and a separate process without a server: each
    broadcast reaches a real receiver exactly once."""
    import asyncio
    import time

    from tests.support import Client

    host, base = served.host, f"http://127.0.0.1:{served.port}"
    made = host.manage("create_receiver_token", "admin")  # staff: the post_save handler's audience
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[1].strip()
    listener = await Client(f"ws://127.0.0.1:{served.port}/ws/broadcast/").connect(
        additional_headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    await listener.wait_for(lambda c: c.last_count() is not None, timeout=20, what="connected")

    def request(method: str, path: str, data: bytes | None = None) -> tuple[int, dict[str, object]]:
        headers = {}
        if method == "POST":  # the CSRF cookie and header Django asks a form post for
            with urllib.request.urlopen(base + "/admin/login/", timeout=10) as resp:
                cookie = resp.headers["Set-Cookie"].split(";")[0]
            headers = {"Cookie": cookie, "X-CSRFToken": cookie.split("=", 1)[1],
                       "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
        asked = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(asked, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    started = time.monotonic()
    status, answer = await asyncio.to_thread(request, "POST", "/teams/", b"name=red")
    took = time.monotonic() - started
    assert status == 201 and answer["broadcast"], answer
    # A sync view under daphne: its commit sends at once (no wait on its own request's thread).
    assert took < 5 and "kept pending" not in served.log.read_text(), took
    assert (await asyncio.to_thread(request, "GET", "/fails/"))[0] == 500
    status, answer = await asyncio.to_thread(request, "GET", "/maintenance/")
    assert status == 200 and answer["clients"] == 1, answer
    new_user = "from django.contrib.auth.models import User; User.objects.create_user('newbie')"
    for command in (["shell", "-c", new_user], ["announce", "From a command"]):
        done = await asyncio.to_thread(host.manage, *command)
        assert done.returncode == 0, done.stderr
    script = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", SCRIPT], cwd=host.root,
                                     env=host.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert script.returncode == 0 and script.stdout.strip().isdigit(), script.stderr
    done = await asyncio.to_thread(host.manage, "announce", "Last")
    assert done.returncode == 0 and "Sent to 1 receivers" in done.stdout, done.stdout
    await listener.wait_for(lambda c: "Last" in c.messages(), timeout=20, what="the last broadcast")
    heard = [t for t in listener.messages() if t != "New account: admin"]
    assert heard == ["New team: red", "Maintenance at 22:00", "New account: newbie", "From a command",
                     "From a script", "Last"], heard  # fmt: skip
    count = ("from broadcaster.models import BroadcastRecord as B; from django.contrib.auth.models import "
             "Group as G; print(B.objects.filter(text='Never sent').count(), G.objects.filter(name='never')"
             ".count(), G.objects.filter(name='red').count())")  # fmt: skip
    rows = host.manage("shell", "-c", count)
    assert rows.stdout.split()[-3:] == ["0", "0", "1"], rows.stdout
    await listener.close()
