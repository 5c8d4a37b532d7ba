"""The accounts' pages: sign up, log in and out, the user's API keys."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.mixins import LoginRequiredMixin
from django.shortcuts import get_object_or_404, redirect
from django.views.generic import FormView, View

from accounts import selectors
from accounts.forms import ApiKeyCreateForm, SignUpForm
from accounts.models import ApiKey, ApiKeyScope
from accounts.services import api_key_create, api_key_revoke, user_wallet_open


class SignInView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class SignUpView(FormView):
    template_name = "accounts/signup.html"
    form_class = SignUpForm

    def form_valid(self, form):
        user = form.save()
        user_wallet_open(user=user)
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(self.request, f"Welcome, {user.username}. Your wallet is open.")
        return redirect("home")


class KeyListView(LoginRequiredMixin, FormView):
    """The user's client keys; a new key is shown once, on the page that created it."""

    template_name = "accounts/keys.html"
    form_class = ApiKeyCreateForm

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "keys": selectors.api_keys_of(user=self.request.user)}

    def form_valid(self, form):
        issued = api_key_create(user=self.request.user, scope=ApiKeyScope.CLIENT, name=form.cleaned_data["name"])
        # Rendered, not redirected: the raw key must never be stored, not even in the session.
        return self.render_to_response(
            self.get_context_data(form=ApiKeyCreateForm(), new_key=issued.raw_key, new_key_name=issued.api_key.name)
        )


class KeyRevokeView(LoginRequiredMixin, View):
    http_method_names = ["post"]

    def post(self, request, key_id):
        api_key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
        api_key_revoke(api_key=api_key)
        messages.success(request, f"Key {api_key.prefix}… is revoked.")
        return redirect("accounts:keys")
