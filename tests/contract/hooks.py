"""Schemathesis hooks for the contract test (loaded through SCHEMATHESIS_HOOKS).

- A check that no tenant receives another's objects: every response to tenant A is scanned for
  the ids of tenant B's objects, and every successful GET of one of A's objects is replayed with
  B's token, which must answer 404 (or 403 where the role does not allow the route at all).
- Fresh Idempotency-Keys: a client uses a new key for each distinct request; the generator
  would otherwise reuse one key for different bodies and get the (correct) 422.
"""

import os
import re
import uuid

import schemathesis

PEER_TOKEN = os.environ["CRM_PEER_TOKEN"]
PEER_IDS = [i for i in os.environ.get("CRM_PEER_IDS", "").split() if i]
VALID_KEY = re.compile(r"^[!-~]{1,255}$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and VALID_KEY.match(headers[name]):
            headers[name] = str(uuid.uuid4())


@schemathesis.check
def tenant_isolation(ctx, response, case):
    body = response.text or ""
    leaked = [i for i in PEER_IDS if i in body]
    if leaked:
        raise AssertionError(f"another tenant's objects in the response: {leaked}")
    if (
        case.method.upper() == "GET"
        and response.status_code == 200
        and case.path_parameters
        and not case.path.startswith("/v1/auth/")
    ):
        peer = case.call(headers={"Authorization": f"Bearer {PEER_TOKEN}"})
        if peer.status_code not in (403, 404):
            raise AssertionError(
                f"another tenant got {peer.status_code} for {case.formatted_path}, expected 404"
            )
        leaked = [i for i in PEER_IDS if i in (peer.text or "")]
        if leaked:
            raise AssertionError(f"ids of the peer leaked: {leaked}")
    return None
