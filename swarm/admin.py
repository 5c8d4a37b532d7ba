from decimal import Decimal

from django.contrib import admin, messages

from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline, confirm_action
from core.errors import ServiceError
from core.services import staff_action_record
from payments.models import PaymentStatus
from swarm import selectors, services
from swarm.models import ShareOutcome, Swarm, SwarmMember, SwarmShare, SwarmTask


class SwarmMemberInline(ReadOnlyInline):
    model = SwarmMember
    fields = ("miner", "agent", "role", "capability", "priority", "region", "live_status", "joined_at", "left_at")

    @admin.display(description="live status")
    def live_status(self, member: SwarmMember) -> str:
        return selectors.member_status(member.miner)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("miner", "agent")


@admin.register(Swarm)
class SwarmAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_by", "members_now", "created_at")
    search_fields = ("=id", "created_by__username", "members__miner__miner_id")
    list_select_related = ("created_by",)
    ordering = ("-created_at",)
    inlines = [SwarmMemberInline]

    @admin.display(description="members")
    def members_now(self, swarm: Swarm) -> int:
        return swarm.members.filter(left_at__isnull=True).count()


class SwarmShareInline(ReadOnlyInline):
    model = SwarmShare
    fields = ("index", "member", "job", "outcome", "created_at", "ended_at")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("member__miner", "job")


@admin.register(SwarmTask)
class SwarmTaskAdmin(ReadOnlyAdmin):
    list_display = ("id", "swarm", "client", "strategy", "status", "collaborators", "agreement", "created_at")
    list_filter = ("status", "strategy")
    search_fields = ("=id", "=swarm__id", "client__username", "shares__member__miner__miner_id")
    list_select_related = ("swarm", "client")
    ordering = ("-created_at",)
    inlines = [SwarmShareInline]
    actions = ["cancel_tasks"]

    def has_move_money_permission(self, request) -> bool:
        # As on the ledger's own pages: moving money takes the ledger's "add" permission.
        return request.user.has_perm("payments.add_ledgertransaction")

    @admin.action(description="Cancel selected tasks and refund their running shares…", permissions=["move_money"])
    def cancel_tasks(self, request, queryset):
        tasks = [task for task in queryset.select_related("client") if not task.is_terminal]
        held = [
            share.job
            for share in SwarmShare.objects.filter(task__in=tasks, job__payment__status=PaymentStatus.ESCROWED)
            .exclude(outcome__in=[ShareOutcome.REPLACED, ShareOutcome.CHOSEN, ShareOutcome.NOT_CHOSEN])
            .select_related("job__payment")
        ]
        total = sum((job.payment.amount for job in held), Decimal(0))

        def cancel(cleaned):
            cancelled = []
            for task in tasks:
                try:
                    cancelled.append(services.task_cancel(task=task))
                except ServiceError as error:
                    self.message_user(request, f"{task}: {error.detail}", messages.WARNING)
            if cancelled:
                summary = f"Cancelled {len(cancelled)} swarm task(s)."
                staff_action_record(
                    actor=request.user, action="cancel swarm tasks", targets=cancelled, summary=summary,
                    reason=cleaned["reason"], amount=total or None,
                )  # fmt: skip
                self.message_user(request, summary, messages.SUCCESS)

        return confirm_action(
            self,
            request,
            tasks,
            title="Cancel swarm tasks and refund their running shares",
            changes=[f"Task {task.pk} ({task.strategy}, {task.client}) is cancelled." for task in tasks],
            money_moved=f"Up to {total} AITBC held for {len(held)} share(s) goes back to the clients." if held else "",
            act=cancel,
            submit="Cancel tasks",
        )
