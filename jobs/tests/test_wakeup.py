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


def test_an_announcement_held_back_wakes_no_waiter_while_the_job_is_offered():
    hub, woken = quiet_hub(), []
    with hub.waiter(["chat"], on_wake=lambda: woken.append("chat")):
        hub.hold_back(["job-1"])
        hub._announced("job-1", "chat")
        assert woken == []
        hub.let_go(["job-1"], taken={"job-1"})
        assert woken == []


def test_an_announcement_held_back_for_a_job_nobody_took_wakes_a_waiter_once_let_go():
    hub, woken = quiet_hub(), []
    with hub.waiter(["chat"], on_wake=lambda: woken.append("chat")):
        hub.hold_back(["job-1"])
        hub._announced("job-1", "chat")
        hub.let_go(["job-1"], taken=set())
        assert woken == ["chat"]


def test_an_announcement_arriving_after_its_job_was_taken_wakes_no_waiter():
    hub, woken = quiet_hub(), []
    with hub.waiter(["chat"], on_wake=lambda: woken.append("chat")):
        hub.hold_back(["job-1", "job-2"])
        hub.let_go(["job-1", "job-2"], taken={"job-1"})
        hub._announced("job-1", "chat")
        hub._announced("job-2", "chat")  # not taken: announced as usual
        hub._announced("job-3", "chat")  # never held back
        assert woken == ["chat", "chat"]
