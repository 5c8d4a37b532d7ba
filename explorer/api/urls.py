from django.urls import path

from explorer.api import views

# The explorer answers under /v1/explorer/ and, for the original coordinator's clients, /explorer/.
_EXPLORER_ROUTES = [
    ("blocks", views.ExplorerBlockListView, "blocks"),
    ("blocks/<str:height_or_hash>", views.ExplorerBlockDetailView, "block"),
    ("transactions", views.ExplorerTransactionListView, "transactions"),
    ("transactions/<str:tx_hash>", views.ExplorerTransactionDetailView, "transaction"),
    ("transactions/<str:tx_hash>/proof", views.ExplorerTransactionProofView, "transaction-proof"),
    ("addresses", views.ExplorerAddressListView, "addresses"),
    ("addresses/<str:address>", views.ExplorerAddressDetailView, "address"),
    ("receipts", views.ExplorerReceiptListView, "receipts"),
    ("stats", views.NetworkStatsView, "stats"),
]

urlpatterns = [
    path("v1/receipts", views.ReceiptListView.as_view(), name="receipts"),
    path("v1/receipts/verify", views.ReceiptVerifyView.as_view(), name="receipt-verify"),
    path("v1/receipts/public-key", views.ReceiptPublicKeyView.as_view(), name="receipt-public-key"),
    path("v1/receipts/<str:receipt_id>", views.ReceiptDetailView.as_view(), name="receipt-detail"),
    path("v1/receipts/<str:receipt_id>/proof", views.ReceiptProofView.as_view(), name="receipt-proof"),
    path("v1/receipts/<str:receipt_id>/opening", views.ReceiptOpeningView.as_view(), name="receipt-opening"),
    path(
        "v1/receipts/<str:receipt_id>/attestations",
        views.ReceiptAttestationsView.as_view(),
        name="receipt-attestations",
    ),
    path("v1/stats", views.NetworkStatsView.as_view(), name="network-stats"),
    # The AITBC CLI's blockchain commands.
    path("api/v1/blocks", views.ChainBlockListView.as_view(), name="chain-blocks"),
    *(
        path(f"{prefix}explorer/{route}", view.as_view(), name=f"{name_prefix}explorer-{name}")
        for prefix, name_prefix in (("v1/", ""), ("", "legacy-"))
        for route, view, name in _EXPLORER_ROUTES
    ),
]
