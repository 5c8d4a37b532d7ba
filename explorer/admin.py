from django.contrib import admin

from core.admin_bases import ReadOnlyAdmin, ReadOnlyInline
from explorer import selectors
from explorer.models import Block, BlockLeaf


class BlockLeafInline(ReadOnlyInline):
    model = BlockLeaf
    fields = ("position", "kind", "ref", "leaf_hash")


@admin.register(Block)
class BlockAdmin(ReadOnlyAdmin):
    list_display = ("height", "hash", "tx_count", "timestamp", "proposer")
    search_fields = ("=hash", "=height")
    readonly_fields = ("height", "hash", "prev_hash", "merkle_root", "timestamp", "tx_count", "proposer", "signature")
    date_hierarchy = "timestamp"
    inlines = [BlockLeafInline]
    actions = ["verify_chain"]

    @admin.action(description="Verify the whole chain from genesis")
    def verify_chain(self, request, queryset):
        problems = list(selectors.chain_problems())
        if problems:
            shown = "; ".join(problems[:10])
            self.message_user(request, f"{len(problems)} problem(s): {shown}", level="error")
        else:
            self.message_user(request, "The chain verifies from genesis.")


@admin.register(BlockLeaf)
class BlockLeafAdmin(ReadOnlyAdmin):
    list_display = ("leaf_hash", "kind", "ref", "block", "position")
    list_filter = ("kind",)
    search_fields = ("=leaf_hash", "=ref")
    list_select_related = ("block",)
    readonly_fields = ("block", "position", "kind", "ref", "leaf_hash")
