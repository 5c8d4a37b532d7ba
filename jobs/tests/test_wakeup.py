"""``jobs.wakeup``: a waiter that wakes its event loop from the announcing thread."""

from jobs import wakeup


def quiet_hub() -> wakeup.WakeupHub:
    """A hub of its own, announced to directly (no LISTEN connection)."""
    hub = wakeup.WakeupHub()
    hub._ensure_listener = lambda: None
    return hub


def test_a_waiter_with_on_wake_is_called_for_each_wake_up_of_its_models():
    hub, woken = quiet_hub(), []
    with hub.waiter(["chat"], on_wake=lambda: woken.append("chat")) as waiter:
        hub.notify("chat")
        hub.notify("other")
        hub.notify("chat")
        assert woken == ["chat", "chat"]
        assert len(waiter._pending) == 2  # for the claims that follow (``claimed``)


def test_a_waiter_whose_on_wake_fails_is_dropped_and_its_wake_up_goes_to_another():
    hub, woken = quiet_hub(), []

    def loop_closed():
        raise RuntimeError("Event loop is closed")

    with hub.waiter(["chat"], on_wake=lambda: woken.append("live")), hub.waiter(["chat"], on_wake=loop_closed) as dead:
        hub.notify("chat")  # the live waiter first (the longest waiting), then rotated
        hub.notify("chat")  # the dead one: dropped, the wake-up passed on to the live one
        assert woken == ["live", "live"]
        assert dead not in hub._waiters
        hub.notify("chat")
        assert woken == ["live", "live", "live"]
