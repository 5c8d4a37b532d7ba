import ipaddress

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from accounts.api.authentication import SessionTokenAuthentication
from core.api.permissions import IsMiner, is_admin
from core.errors import Invalid
from miners import selectors, services
from miners.api.authentication import MinerKeyAuthentication
from miners.api.serializers import (
    MinerCapabilitiesSerializer,
    MinerRegisteredSerializer,
    MinerRegisterSerializer,
    MinerSerializer,
)
from miners.models import Miner

MINER_ID_HEADER = OpenApiParameter(
    "X-Miner-ID",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Which of the key owner's miners is speaking (defaults to the owner's username).",
)
ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(
        description="Not a miner key; or the miner is banned (MINER_BANNED) or offline for maintenance (MINER_MAINTENANCE), with the reason"
    ),
    404: OpenApiResponse(description="Miner not registered, or no such job"),
}


def client_address(request) -> str | None:
    """The caller's address, behind ``NUM_PROXIES`` trusted proxies as the rate limits read it (None
    when that is no address)."""
    try:
        return str(ipaddress.ip_address(BaseThrottle().get_ident(request) or ""))
    except ValueError:
        return None


def named_miner_id(request) -> str | None:
    """The miner a request names: ``X-Miner-ID``, else ``miner_id`` in the body or the query."""
    data = request.data if isinstance(request.data, dict) else {}
    return request.headers.get("X-Miner-ID") or data.get("miner_id") or request.query_params.get("miner_id")


class MinerView(APIView):
    # The project's defaults, with the key read together with the miner the request names.
    authentication_classes = [MinerKeyAuthentication, SessionTokenAuthentication, SessionAuthentication]
    permission_classes = [IsMiner]

    def miner(self, miner_id: str | None = None) -> Miner:
        miner_id = str(miner_id or named_miner_id(self.request) or self.request.user.username)
        # The miner named by X-Miner-ID was read with the API key (MinerKeyAuthentication).
        named_id, named = getattr(self.request, "named_miner", (None, None))
        miner = selectors.miner_for_owner(
            owner=self.request.user,
            miner_id=miner_id,
            any_owner=is_admin(self.request),
            looked_up=named if named_id == miner_id else selectors.NOT_LOOKED_UP,
        )
        if not is_admin(self.request):
            # A banned miner, or one in maintenance, is told why at every request (403).
            services.miner_refusal_check(miner=miner)
        return miner


class RegisterView(MinerView):
    @extend_schema(
        summary="Register (or re-register) a miner",
        request=MinerRegisterSerializer,
        parameters=[MINER_ID_HEADER],
        responses={200: MinerRegisteredSerializer, 409: OpenApiResponse(description="miner_id taken"), **ERRORS},
    )
    def post(self, request):
        registration = MinerRegisterSerializer(data=request.data)
        registration.is_valid(raise_exception=True)
        data = registration.validated_data
        miner_id = named_miner_id(request) or request.user.username
        if len(miner_id) > 128 or "\x00" in miner_id:
            raise Invalid("A miner id is at most 128 characters.", code="VALIDATION_ERROR")
        miner, session_token = services.miner_register(
            owner=request.user,
            miner_id=miner_id,
            capabilities=data["parsed"],
            public_key=data.get("public_key", ""),
            address=client_address(request),
        )
        return Response(MinerRegisteredSerializer({"session_token": session_token, "miner_id": miner.miner_id}).data)


class MinerCapabilitiesView(MinerView):
    @extend_schema(
        summary="Replace a miner's capabilities",
        request=MinerCapabilitiesSerializer,
        responses={200: MinerSerializer, **ERRORS},
    )
    def put(self, request, miner_id):
        update = MinerCapabilitiesSerializer(data=request.data)
        update.is_valid(raise_exception=True)
        miner = services.miner_update_capabilities(
            miner=self.miner(miner_id), capabilities=update.validated_data["capabilities"]
        )
        return Response(MinerSerializer(miner).data)
