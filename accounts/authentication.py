from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.services import api_token_check
from config.errors import DomainError


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer pbt_...` with a personal API token; `request.auth`
    is the token, whose scope accounts.permissions.TokenScope checks."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Send the token as `Authorization: Bearer <token>`.")
        try:
            token = api_token_check(raw=header[1])
        except DomainError as error:
            raise exceptions.AuthenticationFailed(error.message) from None
        return token.user, token

    def authenticate_header(self, request) -> str:
        return self.keyword
