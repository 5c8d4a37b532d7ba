from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import IsClient, IsMiner, is_admin
from core.errors import Invalid, NotFound
from explorer import selectors, verify
from explorer.api.pagination import NextOffsetPagination
from explorer.api.serializers import (
    ExplorerAddressDetailSerializer,
    ExplorerAddressSerializer,
    ExplorerBlockDetailSerializer,
    ExplorerBlockSerializer,
    ExplorerReceiptSerializer,
    ExplorerTransactionSerializer,
    MerkleProofSerializer,
    NetworkStatsSerializer,
    ReceiptAttestationRequestSerializer,
    ReceiptCheckSerializer,
    ReceiptDocumentSerializer,
    ReceiptOpeningViewSerializer,
    ReceiptPublicKeySerializer,
    ReceiptVerificationSerializer,
)
from explorer.filters import ExplorerReceiptFilter, ReceiptFilter
from jobs.models import Receipt
from jobs.receipts import receipt_attest
from jobs.selectors import receipt_documents, receipt_of_client, receipt_visible_to, receipts_of_client
from payments.selectors import wallet_by_address, wallets_list

ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="The key's scope does not allow this"),
    404: OpenApiResponse(description="No such receipt (or not yours)"),
}
NOT_FOUND = {404: OpenApiResponse(description="Not found")}
NOT_SEALED = {404: OpenApiResponse(description="Not found, or not sealed into a block yet (NOT_SEALED)")}


def _receipt_not_found() -> NotFound:
    return NotFound("Receipt not found.", code="RECEIPT_NOT_FOUND")


# --- Receipts ------------------------------------------------------------------------------


class ReceiptListView(generics.ListAPIView):
    """A client's own receipts; an admin key sees everyone's."""

    permission_classes = [IsClient]
    serializer_class = ReceiptDocumentSerializer
    pagination_class = ItemsLimitOffsetPagination
    filter_backends = [DjangoFilterBackend]
    filterset_class = ReceiptFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Receipt.objects.none()
        return receipts_of_client(user=self.request.user, is_admin=is_admin(self.request))

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(receipt_documents(page))

    @extend_schema(summary="List my receipts", responses={200: ReceiptDocumentSerializer(many=True), **ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ReceiptDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Get a signed receipt",
        description="For the job's client, the owner of the miner that did the job, or an admin.",
        responses={200: ReceiptDocumentSerializer, **ERRORS},
    )
    def get(self, request, receipt_id):
        receipt = receipt_visible_to(receipt_id=receipt_id, user=request.user, is_admin=is_admin(request))
        if receipt is None:
            raise _receipt_not_found()
        return Response(receipt.served_document())


class ReceiptAttestationsView(APIView):
    permission_classes = [IsMiner]

    @extend_schema(
        summary="Attest a receipt (the provider miner's co-signature)",
        description=(
            "The miner that did the job signs the receipt's payload (the document without `signature` "
            "and `attestations`, canonical JSON) with the Ed25519 key it registered. The receipt itself "
            "never changes: attestations are served alongside it."
        ),
        request=ReceiptAttestationRequestSerializer,
        responses={
            201: ReceiptDocumentSerializer,
            200: OpenApiResponse(ReceiptDocumentSerializer, description="Already attested with this key"),
            403: OpenApiResponse(description="Not a miner key, or not the receipt's provider"),
            404: OpenApiResponse(description="No such receipt"),
            422: OpenApiResponse(description="Bad signature, wrong key, or the miner registered no key"),
        },
    )
    def post(self, request, receipt_id):
        attestation = ReceiptAttestationRequestSerializer(data=request.data)
        attestation.is_valid(raise_exception=True)
        receipt = Receipt.objects.filter(pk=receipt_id).first()
        if receipt is None:
            raise _receipt_not_found()
        _, created = receipt_attest(receipt=receipt, owner=request.user, **attestation.validated_data)
        receipt = Receipt.objects.prefetch_related("attestations").get(pk=receipt.pk)
        return Response(receipt.served_document(), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ReceiptVerifyView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Verify a receipt",
        description=(
            "Checks the coordinator's signature against our public key(s), and every attestation. Sent as "
            '`{"receipt", "opening", "payload", "result"}`, it also checks that the receipt commits to '
            "the payload and the result given, with the opening's salts (which the job's client holds): valid only "
            "if every one given matches."
        ),
        request=PolymorphicProxySerializer(
            component_name="ReceiptVerify",
            serializers=[ReceiptDocumentSerializer, ReceiptCheckSerializer],
            resource_type_field_name=None,
        ),
        responses={200: ReceiptVerificationSerializer, 422: OpenApiResponse(description="Not a receipt")},
    )
    def post(self, request):
        document, given = verify.unpack(request.data)
        if not isinstance(document, dict):
            raise Invalid("A receipt is a JSON object.", code="VALIDATION_ERROR")
        # Only something shaped like a receipt is checked: a missing body or field is a 422.
        ReceiptDocumentSerializer(data=document).is_valid(raise_exception=True)
        return Response(selectors.receipt_verification(document, **given))


class ReceiptOpeningView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Get a receipt's opening",
        description=(
            "The salts of the receipt's input and output commitments, for its job's client (or an admin) alone. "
            "With them and the job's payload and result, anyone the client shows them to can check what the "
            "receipt commits to (POST /v1/receipts/verify, manage.py verify_receipt); without them, no guess can be "
            "checked. A receipt signed before commitments has none (404 RECEIPT_HAS_NO_OPENING): its digests are "
            "plain SHA-256."
        ),
        responses={200: ReceiptOpeningViewSerializer, **ERRORS},
    )
    def get(self, request, receipt_id):
        receipt = receipt_of_client(receipt_id=receipt_id, user=request.user, is_admin=is_admin(request))
        if receipt is None:
            raise _receipt_not_found()
        if receipt.opening is None:
            raise NotFound(
                "This receipt was signed before commitments: its digests are plain SHA-256 and need no opening.",
                code="RECEIPT_HAS_NO_OPENING",
            )
        return Response({"receipt_id": receipt.receipt_id, **receipt.opening})


class ReceiptPublicKeyView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(summary="The coordinator's receipt-signing public key", responses={200: ReceiptPublicKeySerializer})
    def get(self, request):
        return Response(selectors.receipt_public_key())


class ReceiptProofView(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Merkle inclusion proof of a receipt in its block",
        responses={200: MerkleProofSerializer, **NOT_SEALED},
    )
    def get(self, request, receipt_id):
        leaf = selectors.leaf_of_receipt(receipt_id)
        if leaf is None:
            if not Receipt.objects.filter(pk=receipt_id).exists():
                raise _receipt_not_found()
            raise NotFound("This receipt is not sealed into a block yet.", code="NOT_SEALED")
        return Response(selectors.leaf_proof(leaf))


# --- Explorer (public) -----------------------------------------------------------------------


class ExplorerView(APIView):
    """Public: no key needed; anonymous callers are rate limited per IP."""

    permission_classes = [AllowAny]


class ExplorerListView(ExplorerView, generics.ListAPIView):
    pagination_class = NextOffsetPagination
    filter_backends = []


class ExplorerBlockListView(ExplorerListView):
    serializer_class = ExplorerBlockSerializer

    def get_queryset(self):
        return selectors.blocks()

    @extend_schema(summary="Blocks, newest first", responses={200: ExplorerBlockSerializer(many=True)})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ChainBlockListView(ExplorerBlockListView):
    """The AITBC CLI's ``GET /api/v1/blocks?limit&chain_id``: the explorer's blocks. The coordinator
    keeps one chain, so ``chain_id`` names it whatever its value."""

    @extend_schema(
        summary="Blocks, newest first (the AITBC CLI's route)",
        parameters=[OpenApiParameter("chain_id", str, required=False, description="Accepted; there is one chain")],
        responses={200: ExplorerBlockSerializer(many=True)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ExplorerBlockDetailView(ExplorerView):
    @extend_schema(summary="A block, by height or hash", responses={200: ExplorerBlockDetailSerializer, **NOT_FOUND})
    def get(self, request, height_or_hash):
        block = selectors.block_by_height_or_hash(height_or_hash)
        if block is None:
            raise NotFound("Block not found.", code="BLOCK_NOT_FOUND")
        block.sealed_leaves = list(selectors.block_leaves(block))
        return Response(ExplorerBlockDetailSerializer(block).data)


class ExplorerTransactionListView(ExplorerListView):
    serializer_class = ExplorerTransactionSerializer

    def get_queryset(self):
        return selectors.sealed_leaves()

    def list(self, request, *args, **kwargs):
        page = selectors.with_documents(self.paginate_queryset(self.get_queryset()))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        summary="Sealed receipts and ledger transactions, newest first",
        responses={200: ExplorerTransactionSerializer(many=True)},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


def _leaf_or_404(leaf_hash: str):
    leaf = selectors.leaf_by_hash(leaf_hash)
    if leaf is None:
        raise NotFound("No sealed transaction has this hash.", code="TRANSACTION_NOT_FOUND")
    return leaf


class ExplorerTransactionDetailView(ExplorerView):
    @extend_schema(
        summary="A sealed receipt or ledger transaction, by its leaf hash",
        responses={200: ExplorerTransactionSerializer, **NOT_FOUND},
    )
    def get(self, request, tx_hash):
        [leaf] = selectors.with_documents([_leaf_or_404(tx_hash)])
        return Response(ExplorerTransactionSerializer(leaf).data)


class ExplorerTransactionProofView(ExplorerView):
    @extend_schema(
        summary="Merkle inclusion proof of a sealed transaction, by its leaf hash",
        responses={200: MerkleProofSerializer, **NOT_FOUND},
    )
    def get(self, request, tx_hash):
        return Response(selectors.leaf_proof(_leaf_or_404(tx_hash)))


class ExplorerAddressListView(ExplorerListView):
    serializer_class = ExplorerAddressSerializer

    def get_queryset(self):
        return wallets_list()

    def list(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([selectors.wallet_summary(wallet) for wallet in page])

    @extend_schema(summary="Wallet addresses", responses={200: ExplorerAddressSerializer(many=True)})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class ExplorerAddressDetailView(ExplorerView):
    @extend_schema(
        summary="A wallet address: balance and ledger entries (newest first)",
        parameters=[
            OpenApiParameter("limit", int, required=False, description="Entries per page (default 50)"),
            OpenApiParameter("offset", int, required=False),
        ],
        responses={200: ExplorerAddressDetailSerializer, **NOT_FOUND},
    )
    def get(self, request, address):
        wallet = wallet_by_address(address)
        if wallet is None:
            raise NotFound("No wallet has this address.", code="ADDRESS_NOT_FOUND")
        paginator = NextOffsetPagination()
        entries = paginator.paginate_queryset(selectors.wallet_entries(wallet), request, view=self)
        return Response(
            {
                **selectors.wallet_summary(wallet),
                "entries": [selectors.entry_document(entry) for entry in entries],
                "next_offset": paginator.next_offset,
            }
        )


class ExplorerReceiptListView(ExplorerListView):
    serializer_class = ExplorerReceiptSerializer
    filter_backends = [DjangoFilterBackend]
    filterset_class = ExplorerReceiptFilter

    def get_queryset(self):
        return selectors.explorer_receipts()

    def list(self, request, *args, **kwargs):
        page = selectors.with_public_documents(self.paginate_queryset(self.filter_queryset(self.get_queryset())))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(summary="Receipts, newest first", responses={200: ExplorerReceiptSerializer(many=True)})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class NetworkStatsView(ExplorerView):
    @extend_schema(summary="Network statistics", responses={200: NetworkStatsSerializer})
    def get(self, request):
        return Response(NetworkStatsSerializer(selectors.network_figures()).data)
