from django.urls import path

from accounts.api import views

urlpatterns = [
    path("v1/auth/nonce", views.SignInNonceView.as_view(), name="auth-nonce"),
    path("v1/users/login", views.WalletLoginView.as_view(), name="users-login"),
    path("v1/login", views.WalletLoginView.as_view(), name="login"),
    path("v1/users/me", views.MeView.as_view(), name="users-me"),
    path("v1/users/<int:user_id>/balance", views.UserBalanceView.as_view(), name="user-balance"),
    path("v1/users/<int:user_id>/transactions", views.UserTransactionsView.as_view(), name="user-transactions"),
    path("v1/logout", views.SignOutView.as_view(), name="logout"),
    path("v1/users/logout", views.SignOutView.as_view(), name="users-logout"),
]
