from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.services import api_token_authenticate


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer pbt_...` with a personal API token."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Send the token as `Authorization: Bearer <token>`.")
        user = api_token_authenticate(raw=header[1])
        if user is None:
            raise exceptions.AuthenticationFailed("This API token is unknown or was revoked.")
        return user, None

    def authenticate_header(self, request) -> str:
        return self.keyword
