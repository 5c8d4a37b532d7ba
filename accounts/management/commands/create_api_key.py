from django.core.management.base import BaseCommand

from accounts.models import ApiKeyScope
from accounts.services import api_key_create, user_get_or_create


class Command(BaseCommand):
    help = "Create an API key (creating the user if needed) and print it alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--scope", required=True, choices=ApiKeyScope.values)
        parser.add_argument("--user", required=True, help="username; created if it does not exist")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, scope, user, name, **options):
        owner = user_get_or_create(username=user)
        issued = api_key_create(user=owner, scope=scope, name=name)
        self.stderr.write(f"Created {scope} key {issued.api_key.prefix}… for {owner.username}. It is shown once:")
        self.stdout.write(issued.raw_key)
