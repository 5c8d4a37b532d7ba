from django.urls import path
from django.views.generic import RedirectView

from explorer import views

app_name = "explorer"

# Every page ends in a slash. The explorer's JSON aliases (explorer/api/urls.py) have none
# (``/explorer/blocks`` is JSON, ``/explorer/blocks/`` is this page) and are mounted first.
urlpatterns = [
    path("network/", views.NetworkView.as_view(), name="network"),
    path("explorer/", views.BlockListView.as_view(), name="explorer"),
    path("explorer/blocks/", RedirectView.as_view(pattern_name="explorer:explorer"), name="blocks"),
    path("explorer/blocks/<int:height>/", views.BlockDetailView.as_view(), name="block"),
    path("explorer/transactions/<str:tx_hash>/", views.TransactionDetailView.as_view(), name="transaction"),
    path("explorer/addresses/<str:address>/", views.AddressDetailView.as_view(), name="address"),
    path("explorer/receipts/", views.ReceiptListView.as_view(), name="receipts"),
]
