"""Create the first administrator when there is none, and print how to log in."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an 'admin' superuser with a random password if no superuser exists yet."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("Log in with your administrator account (reset a password: manage.py changepassword).")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=options["username"], email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(f"Created administrator '{options['username']}' with password: {password}")
            + "\nThis password is shown once; change it with: manage.py changepassword "
            + options["username"]
        )
