from django.contrib.auth import logout
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.api.serializers import (
    SignInNonceCreateSerializer,
    SignInNonceSerializer,
    SignInSessionSerializer,
    SignOutSerializer,
    UserBalanceSerializer,
    UserLedgerEntrySerializer,
    UserProfileSerializer,
    WalletLoginSerializer,
)
from accounts.models import User, UserSession
from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import IsClient, is_admin
from core.errors import Invalid, NotFound, ServiceError
from payments.models import LedgerEntry, Wallet
from payments.selectors import wallet_entries, wallet_of

ERRORS = {
    401: OpenApiResponse(description="No, invalid or expired API key or session token"),
    403: OpenApiResponse(description="FORBIDDEN: another user's account (admins may see any)"),
    404: OpenApiResponse(description="USER_NOT_FOUND (admins only; others get 403)"),
}
LOGIN_ERRORS = {
    401: OpenApiResponse(
        description="Not proven: INVALID_SIGNATURE, NONCE_USED, NONCE_EXPIRED, NONCE_NOT_FOUND, ADDRESS_MISMATCH"
    ),
    403: OpenApiResponse(description="ACCOUNT_DISABLED"),
    422: OpenApiResponse(description="Malformed address, key or signature (VALIDATION_ERROR)"),
}


class SignInNonceView(APIView):
    """``POST /v1/auth/nonce``: public; the first step of a wallet sign-in."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Get a sign-in challenge for a wallet",
        request=SignInNonceCreateSerializer,
        responses={201: SignInNonceSerializer, 422: LOGIN_ERRORS[422]},
        auth=[],
    )
    def post(self, request):
        body = SignInNonceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        nonce = services.wallet_nonce_issue(address=body.validated_data["wallet_address"], domain=request.get_host())
        return Response(SignInNonceSerializer(nonce).data, status=status.HTTP_201_CREATED)


class WalletLoginView(APIView):
    """``POST /v1/users/login``: trade a signed challenge for a session token."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Sign in with a wallet signature",
        description=(
            "Sign the UTF-8 bytes of the challenge's `message` with the wallet's Ed25519 key. The first "
            "sign-in of an address creates its account (named after the address) and opens its wallet."
        ),
        request=WalletLoginSerializer,
        responses={200: SignInSessionSerializer, **LOGIN_ERRORS},
        auth=[],
    )
    def post(self, request):
        body = WalletLoginSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        login = services.wallet_login(
            address=data["wallet_address"],
            public_key=data["public_key"],
            signature=data["signature"],
            nonce=data.get("nonce"),
        )
        session = login.issued.session
        return Response(
            SignInSessionSerializer(
                {
                    "user_id": login.user.pk,
                    "wallet_address": login.wallet.address,
                    "session_token": login.issued.raw_token,
                    "expires_at": session.expires_at,
                    "balance": login.wallet.balance,
                }
            ).data
        )


class UserAccountMixin:
    """``/v1/users/{id}/…``: a user sees their own account; an admin sees anyone's."""

    permission_classes = [IsClient]

    def account_owner(self) -> User:
        user_id = self.kwargs["user_id"]
        if user_id == self.request.user.pk:
            return self.request.user
        if not is_admin(self.request):
            raise ServiceError("You may only see your own account.", code="FORBIDDEN", status_code=403)
        user = selectors.user_by_id(user_id)
        if user is None:
            raise NotFound("User not found.", code="USER_NOT_FOUND")
        return user

    @staticmethod
    def account_wallet(user: User) -> Wallet | None:
        """The account's wallet, read only. Accounts open theirs when created; one made some other
        way (say, ``createsuperuser``) has none until it first pays, and reads as an empty balance."""
        return wallet_of(user=user)


class MeView(UserAccountMixin, APIView):
    @extend_schema(summary="My account", responses={200: UserProfileSerializer, 401: ERRORS[401], 403: ERRORS[403]})
    def get(self, request):
        user = request.user
        wallet = self.account_wallet(user)
        return Response(
            UserProfileSerializer(
                {
                    "user_id": user.pk,
                    "username": user.get_username(),
                    "wallet_address": wallet.address if wallet else None,
                    "balance": wallet.balance if wallet else 0,
                    "created_at": user.date_joined,
                }
            ).data
        )


class UserBalanceView(UserAccountMixin, APIView):
    @extend_schema(summary="A user's wallet balance", responses={200: UserBalanceSerializer, **ERRORS})
    def get(self, request, user_id):
        user = self.account_owner()
        wallet = self.account_wallet(user)
        return Response(
            UserBalanceSerializer(
                {
                    "user_id": user.pk,
                    "wallet_address": wallet.address if wallet else None,
                    "balance": wallet.balance if wallet else 0,
                }
            ).data
        )


class UserTransactionsView(UserAccountMixin, generics.ListAPIView):
    serializer_class = UserLedgerEntrySerializer
    pagination_class = ItemsLimitOffsetPagination
    filter_backends = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return LedgerEntry.objects.none()
        wallet = self.account_wallet(self.account_owner())
        return wallet_entries(wallet)

    @extend_schema(
        summary="A user's wallet transactions, newest first",
        responses={200: UserLedgerEntrySerializer(many=True), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class SignOutView(APIView):
    """``POST /v1/logout``: ends the session the request came with."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Sign out (revoke this session token)",
        request=None,
        responses={
            200: SignOutSerializer,
            401: ERRORS[401],
            422: OpenApiResponse(description="NOT_A_SESSION: API keys are revoked, not signed out"),
        },
    )
    def post(self, request):
        if isinstance(request.auth, UserSession):
            services.user_session_revoke(session=request.auth)
        elif request.auth is None:  # a browser's Django session
            logout(request._request)
        else:
            raise Invalid("An API key is revoked by staff, not signed out.", code="NOT_A_SESSION")
        return Response(SignOutSerializer({"status": "ok"}).data)
