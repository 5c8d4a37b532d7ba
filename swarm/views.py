"""The swarms' pages: every swarm and my coordinated tasks; a swarm's members; a task's shares, live."""

from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404
from django.views.generic import TemplateView

from core.errors import NotFound
from swarm import selectors
from swarm.models import ShareOutcome, Strategy

# A task page follows at most this many running shares' jobs over their sockets; past it, it reloads.
LIVE_SHARES_CAP = 16


def with_statuses(members) -> list:
    for member in members:
        member.live_status = selectors.member_status(member.miner)
    return members


class SwarmsPageView(LoginRequiredMixin, TemplateView):
    template_name = "swarm/swarms.html"

    def get_context_data(self, **kwargs):
        swarms = list(selectors.swarms_listed()[:100])
        for swarm in swarms:
            with_statuses(swarm.current_members)
        tasks = selectors.tasks_visible_to(user=self.request.user).order_by("-created_at")[:50]
        return {**super().get_context_data(**kwargs), "swarms": swarms, "tasks": tasks}


class SwarmPageView(LoginRequiredMixin, TemplateView):
    template_name = "swarm/swarm.html"

    def get_context_data(self, swarm_id, **kwargs):
        swarm = selectors.swarms_listed(swarm_id=swarm_id).first()
        if swarm is None:
            raise Http404("No such swarm.")
        tasks = selectors.tasks_visible_to(user=self.request.user).filter(swarm=swarm).order_by("-created_at")[:50]
        return {
            **super().get_context_data(**kwargs),
            "swarm": swarm,
            "members": with_statuses(swarm.current_members),
            "tasks": tasks,
        }


class TaskPageView(LoginRequiredMixin, TemplateView):
    template_name = "swarm/task.html"

    def get_context_data(self, task_id, **kwargs):
        try:
            task = selectors.task_for(user=self.request.user, task_id=task_id)
        except NotFound:
            raise Http404("No such swarm task.") from None
        shares = selectors.shares_of(task)
        views = [selectors.share_view(share) for share in shares]
        pending = [str(view["job_id"]) for view in views if view["outcome"] == ShareOutcome.PENDING]
        consensus = None
        if task.strategy == Strategy.REDUNDANT:
            consensus = selectors.consensus(task, shares, threshold=task.consensus_threshold)
        return {
            **super().get_context_data(**kwargs),
            "task": task,
            "shares": views,
            "figures": selectors.task_figures(task, shares),
            "consensus": consensus,
            "live_jobs": pending if len(pending) <= LIVE_SHARES_CAP else [],
            "reloads": not task.is_terminal and len(pending) > LIVE_SHARES_CAP,
        }
