"""docs/EMBEDDING.md, "The public names", held to the code: every URL name of broadcaster.urls
is listed there, and every one listed exists (issue 29, part 6, in part)."""

from __future__ import annotations

import re

from broadcaster import urls
from tests.support import ROOT


def test_the_documented_url_names_are_the_apps():
    text = (ROOT / "docs" / "EMBEDDING.md").read_text()
    section = text.split("## The public names", 1)[1]
    listed = re.search(
        r"`broadcaster\.urls` and its URL names \((.*?)namespace `broadcaster`\)", section, re.S
    )
    assert listed is not None
    documented = set(re.findall(r"`([a-z-]+)`", listed.group(1)))
    assert documented == {pattern.name for pattern in urls.urlpatterns}
    assert urls.app_name == "broadcaster"
