"""`manage.py create_receiver_token USERNAME`: a bearer token a non-browser receiver connects with."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from broadcaster.models import ReceiverToken


class Command(BaseCommand):
    help = (
        "Create a receiver token for a user: a receiver that sends it (manage.py listen --token, "
        "or 'Authorization: Bearer <secret>' on the WebSocket handshake) hears what that user "
        "would. Its secret is shown once; revoke it in the admin."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="The user whose broadcasts the token's receiver hears.")
        parser.add_argument("--name", default="", help="What the token is for (shown in the admin).")

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_user_model()
        username = options["username"]
        user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"No user {username!r} exists.")
        if not user.is_active:
            raise CommandError(
                f"The user {username!r} is inactive: its token would hear nothing meant for it."
            )
        token = ReceiverToken(user=user, name=options["name"].strip())
        secret = token.issue_secret()
        token.save()
        self.stdout.write(f"Receiver token for {username!r} created. Its secret, shown this once:")
        self.stdout.write(secret)
