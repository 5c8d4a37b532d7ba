"""The explorer's public pages (blocks, sealed transactions, addresses, receipts) and the network page."""

import json

from django.core.paginator import Paginator
from django.http import Http404
from django.views.generic import TemplateView

from explorer import selectors
from payments.selectors import wallet_by_address

PAGE_SIZE = 20


def _page(request, items):
    return Paginator(items, PAGE_SIZE).get_page(request.GET.get("page"))


class NetworkView(TemplateView):
    """Public. The snapshot is rendered; for a signed-in user, ``ws/dashboard/``'s
    ``network.stats`` events update it (the feed is for users and their keys)."""

    template_name = "explorer/network.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "snapshot": selectors.live_network_figures(),
            "stats": selectors.network_figures(),
            "live": self.request.user.is_authenticated,
        }


class BlockListView(TemplateView):
    template_name = "explorer/blocks.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "page": _page(self.request, selectors.blocks()),
            "stats": selectors.network_figures(),
        }


class BlockDetailView(TemplateView):
    template_name = "explorer/block.html"

    def get_context_data(self, height, **kwargs):
        block = selectors.block_by_height_or_hash(str(height))
        if block is None:
            raise Http404("No such block.")
        return {**super().get_context_data(**kwargs), "sealed_block": block, "leaves": selectors.block_leaves(block)}


class TransactionDetailView(TemplateView):
    template_name = "explorer/transaction.html"

    def get_context_data(self, tx_hash, **kwargs):
        leaf = selectors.leaf_by_hash(tx_hash)
        if leaf is None:
            raise Http404("No sealed transaction has this hash.")
        document = selectors.leaf_documents([leaf]).get((leaf.kind, leaf.ref))
        return {
            **super().get_context_data(**kwargs),
            "leaf": leaf,
            "document_pretty": json.dumps(document, indent=2, sort_keys=True) if document is not None else "",
            "proof": selectors.leaf_proof(leaf),
        }


class AddressDetailView(TemplateView):
    template_name = "explorer/address.html"

    def get_context_data(self, address, **kwargs):
        wallet = wallet_by_address(address)
        if wallet is None:
            raise Http404("No wallet has this address.")
        return {
            **super().get_context_data(**kwargs),
            "wallet": wallet,
            "entries": _page(self.request, selectors.wallet_entries(wallet)),
        }


class ReceiptListView(TemplateView):
    template_name = "explorer/receipts.html"

    def get_context_data(self, **kwargs):
        page = _page(self.request, selectors.explorer_receipts())
        rows = [{"receipt": receipt, "document": receipt.public_document()} for receipt in page]
        return {**super().get_context_data(**kwargs), "page": page, "rows": rows}
