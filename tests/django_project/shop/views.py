import logging
import uuid

from django.http import JsonResponse

import logkit

logger = logging.getLogger(__name__)


def order(request, number):
    """Log one line with the request's id bound (what a request middleware would do)."""
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    with logkit.bound(request_id=request_id):
        logger.info("order %s viewed", number)
    return JsonResponse({"number": number, "request_id": request_id})
