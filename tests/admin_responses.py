"""What the admin's tests read from a response: the messages it set, the rows its change list shows."""

from django.contrib.messages import get_messages


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def listed(response) -> list:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)
