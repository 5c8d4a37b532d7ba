from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="accounts:login"), name="logout"),
    path("signup/", views.SignUpView.as_view(), name="signup"),
    path("keys/", views.KeyListView.as_view(), name="keys"),
    path("keys/<int:key_id>/revoke/", views.KeyRevokeView.as_view(), name="key-revoke"),
]
