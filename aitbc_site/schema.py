from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "aitbc_site.api.authentication.ApiKeyAuthentication"
    name = ["ApiKeyHeader", "BearerAuth"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            {"type": "http", "scheme": "bearer"},
        ]


class SessionTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "aitbc_site.api.authentication.SessionTokenAuthentication"
    name = "SessionToken"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "X-Session-Token"}


class MinerKeyAuthenticationScheme(ApiKeyAuthenticationScheme):
    """The miner routes take the same keys (of miner or admin scope), read with the miner they name."""

    target_class = "miners.api.authentication.MinerKeyAuthentication"
    name = ["MinerApiKeyHeader", "MinerBearerAuth"]
