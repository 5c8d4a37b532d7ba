from django.urls import path

from payments.api import exchange_views, views

urlpatterns = [
    path("v1/payments/<str:payment_id>", views.PaymentDetailView.as_view(), name="payment-detail"),
    path("v1/payments/<str:payment_id>/status", views.PaymentStatusView.as_view(), name="payment-status"),
    path("v1/payments/<str:payment_id>/receipt", views.PaymentReceiptView.as_view(), name="payment-receipt"),
    path("v1/exchange/create-payment", exchange_views.ExchangeCreatePaymentView.as_view(), name="exchange-create"),
    path(
        "v1/exchange/payment-status/<str:payment_id>",
        exchange_views.ExchangePaymentStatusView.as_view(),
        name="exchange-payment-status",
    ),
    path(
        "v1/exchange/confirm-payment/<str:payment_id>",
        exchange_views.ExchangeConfirmPaymentView.as_view(),
        name="exchange-confirm",
    ),
    path("v1/exchange/rates", exchange_views.ExchangeRatesView.as_view(), name="exchange-rates"),
    path("v1/exchange/market-stats", exchange_views.ExchangeMarketStatsView.as_view(), name="exchange-market-stats"),
]
