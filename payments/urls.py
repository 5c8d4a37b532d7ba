from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("wallet/", views.WalletView.as_view(), name="wallet"),
]
