"""docs/PUBLIC.md, the public surface, held to the code: every section lists exactly what the code
has (issue 29, part 6). A name added to the code and not to the page, or listed and gone, fails."""

from __future__ import annotations

import importlib
import re

import pytest

import broadcaster
from broadcaster import checks, protocol, urls
from broadcaster.conf import APP_SETTINGS
from broadcaster.templatetags import broadcaster as tags
from tests.support import ROOT

PAGE = (ROOT / "docs" / "PUBLIC.md").read_text()


def listed(heading: str) -> list[str]:
    """The names in the first column of the table under `heading` (a "## " or "### " line)."""
    found = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#|\Z)", PAGE, re.M | re.S)
    assert found is not None, f"docs/PUBLIC.md has no section {heading!r}"
    names = re.findall(r"^\| `([^`]+)` \|", found.group(1), re.M)
    assert len(names) == len(set(names)), f"{heading}: a name listed twice"
    return names


MODULES = re.findall(r"^### `(broadcaster[a-z._]*)`$", PAGE, re.M)


def test_the_page_has_the_public_modules():
    assert MODULES == ["broadcaster", "broadcaster.asgi", "broadcaster.layer", "broadcaster.probes",
                       "broadcaster.signals"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_each_modules_all_is_what_the_page_lists(name):
    module = importlib.import_module(name)
    assert sorted(listed(f"`{name}`")) == sorted(module.__all__)
    for attribute in module.__all__:
        assert getattr(module, attribute) is not None


def test_every_exported_exception_is_a_broadcast_error():
    """One family: `except broadcaster.BroadcastError` catches every error a send raises."""
    exceptions = [getattr(broadcaster, name) for name in broadcaster.__all__]
    exceptions = [value for value in exceptions if isinstance(value, type) and issubclass(value, Exception)]
    from broadcaster.sending import errors

    defined = [
        value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert sorted(exceptions, key=str) == sorted(defined, key=str)  # every one defined is exported
    assert all(issubclass(value, broadcaster.BroadcastError) for value in exceptions)


def test_url_names():
    assert listed("URL names: `broadcaster.urls`") == [pattern.name for pattern in urls.urlpatterns]
    assert urls.app_name == "broadcaster"
    assert "namespace `broadcaster`" in PAGE


def test_template_tags():
    assert listed("Template tags: `{% load broadcaster %}`") == sorted(tags.register.tags)


def test_browser_client_exports():
    source = (ROOT / "broadcaster" / "static" / "broadcaster" / "client.js").read_text()
    exports = re.findall(r"^export (?:const|function|class) (\w+)", source, re.M)
    assert sorted(listed("Browser client: `broadcaster/client.js`")) == sorted(exports)


def test_receiver_endpoints():
    paths = [protocol.RECEIVER_PATH, protocol.SSE_PATH, protocol.SSE_SEEN_PATH]
    assert listed("Receiver endpoints") == paths


def test_settings():
    assert sorted(listed("Settings")) == sorted(setting.name for setting in APP_SETTINGS)


def test_management_commands():
    folder = ROOT / "broadcaster" / "management" / "commands"
    commands = sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
    assert sorted(listed("Management commands")) == commands


def test_system_checks():
    source = "".join(path.read_text() for path in (ROOT / "broadcaster").rglob("*.py"))
    ids = sorted(set(re.findall(r'id="(broadcaster\.[EW]\d+)"', source)))
    assert listed("System checks") == ids
    embedding = (ROOT / "docs" / "EMBEDDING.md").read_text()
    assert sorted(set(re.findall(r"^\| `(broadcaster\.[EW]\d+)` \|", embedding, re.M))) == ids
    assert checks.DOCS == "docs/EMBEDDING.md"
