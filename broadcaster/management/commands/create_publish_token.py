"""`manage.py create_publish_token NAME`: a bearer token for POST /api/broadcasts/."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broadcaster.models import PublishToken


class Command(BaseCommand):
    help = "Create a publish token for the broadcast API; its secret is shown once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The token's name, recorded as the sender (api:NAME).")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError("The name is empty.")
        if PublishToken.objects.filter(name=name, revoked__isnull=True).exists():
            raise CommandError(
                f"An active token named {name!r} exists already; revoke it in the admin (then a new "
                "one may take its name) or pick another name."
            )
        token = PublishToken(name=name)
        secret = token.issue_secret()
        token.save()
        self.stdout.write(f"Token {name!r} created. Its secret, shown this once:")
        self.stdout.write(secret)
