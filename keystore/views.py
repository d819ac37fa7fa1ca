"""The public share-link download (no login): the public half of a key while its link is live."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.utils.text import slugify
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from keystore.sharing import resolve


@never_cache
@require_GET
def shared_public_key(request: HttpRequest, token: str) -> HttpResponse:
    found = resolve(token, request.META.get("REMOTE_ADDR", "unknown"))
    if found is None:
        raise Http404("unknown, expired or revoked link")  # the same answer for every refusal
    name, text = found
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    stem, _, suffix = name.rpartition(".")
    response["Content-Disposition"] = f'attachment; filename="{slugify(stem) or "key"}.{suffix}"'
    return response
