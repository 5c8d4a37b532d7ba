from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.db import transaction

from accounts.models import ApiKey, User, UserSession, WalletNonce
from accounts.services import api_key_create, api_key_revoke, user_session_revoke, user_wallet_open
from core.admin_bases import ReadOnlyAdmin, confirm_action, presence_filter
from core.services import staff_action_record


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("name", "scope", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("name", "scope", "prefix", "created_at", "last_used_at", "revoked_at")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    inlines = [ApiKeyInline]

    def save_model(self, request, obj, form, change):
        # Django's add form saves the user itself; the new account's wallet opens with it (in the
        # transaction the admin runs each save in).
        super().save_model(request, obj, form, change)
        if not change:
            user_wallet_open(user=obj)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "scope", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("scope", ("revoked_at", presence_filter("revoked", empty="Active", filled="Revoked")))
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("user", "name", "scope", "prefix", "created_at", "last_used_at", "revoked_at")
    autocomplete_fields = ("user",)
    actions = ["revoke_keys"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return (*self.readonly_fields, "user", "scope")
        return self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        # A key's use stays on record: it is revoked, never deleted.
        return False

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = api_key_create(user=obj.user, scope=obj.scope, name=obj.name)
        obj.pk = issued.api_key.pk
        obj.prefix = issued.api_key.prefix
        staff_action_record(
            actor=request.user,
            action="create key",
            targets=[issued.api_key],
            summary=f"New {obj.scope} key {obj.prefix}… for {obj.user}.",
        )
        self.message_user(
            request,
            f"New {obj.scope} key for {obj.user}: {issued.raw_key} — copy it now, it will not be shown again.",
            messages.WARNING,
        )

    def log_addition(self, request, obj, message):
        # The key's creation recorded itself, in the audit log's words.
        pass

    @admin.action(description="Revoke selected keys…")
    def revoke_keys(self, request, queryset):
        keys = list(queryset.filter(revoked_at__isnull=True).select_related("user"))

        @transaction.atomic
        def act(cleaned):
            for api_key in keys:
                api_key_revoke(api_key=api_key)
            if keys:
                staff_action_record(
                    actor=request.user,
                    action="revoke keys",
                    targets=keys,
                    summary=f"{len(keys)} key(s) revoked: "
                    + ", ".join(f"{key.prefix}… ({key.scope}, {key.user})" for key in keys)
                    + ".",
                    reason=cleaned["reason"],
                )
            self.message_user(request, f"Revoked {len(keys)} key(s).", messages.SUCCESS)

        return confirm_action(
            self,
            request,
            keys,
            title="Revoke API keys",
            changes=[
                f"Key {key.prefix}… ({key.scope}, {key.user}) stops working at once: requests with it get 401."
                for key in keys
            ],
            act=act,
            submit="Revoke",
        )


@admin.register(UserSession)
class UserSessionAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "user", "wallet_address", "created_at", "expires_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", presence_filter("revoked", empty="Active", filled="Revoked")), "expires_at")
    search_fields = ("prefix", "wallet_address", "user__username")
    list_select_related = ("user",)
    fields = ("user", "wallet_address", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    date_hierarchy = "created_at"
    actions = ["revoke_sessions"]

    def has_revoke_permission(self, request):
        return request.user.has_perm("accounts.change_usersession")

    @admin.action(description="Revoke selected sessions", permissions=["revoke"])
    @transaction.atomic
    def revoke_sessions(self, request, queryset):
        sessions = list(queryset.filter(revoked_at__isnull=True).select_related("user"))
        for session in sessions:
            user_session_revoke(session=session)
        if sessions:
            staff_action_record(
                actor=request.user,
                action="revoke sessions",
                targets=sessions,
                summary=f"{len(sessions)} wallet sign-in(s) ended: "
                + ", ".join(f"{session.prefix}… ({session.user})" for session in sessions)
                + ".",
            )
        self.message_user(request, f"Revoked {len(sessions)} session(s).", messages.SUCCESS)


@admin.register(WalletNonce)
class WalletNonceAdmin(ReadOnlyAdmin):
    list_display = ("address", "nonce", "created_at", "expires_at", "used_at")
    list_filter = (("used_at", presence_filter("used", empty="Unused", filled="Used")), "expires_at")
    search_fields = ("address", "nonce")
    fields = ("address", "nonce", "message", "created_at", "expires_at", "used_at")
    readonly_fields = fields
    date_hierarchy = "created_at"
