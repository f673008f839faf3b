"""Who a DICOM association is: the principal of its calling AE, decided once when the
association is requested (PS3.8 9.3.4 A-ASSOCIATE-RJ for callers we do not know).

With ``security.require_auth`` off (possible only on a loopback archive) today's rule
holds unchanged: any caller from loopback, otherwise only a configured peer from its
address, and every accepted caller is the local principal (full access).

With ``security.require_auth`` on, only the AE titles listed in ``security.dicom_aes``
may associate, each from one of its ``hosts`` when any are listed, and presenting a TLS
client certificate whose subject CN is its ``certificate_subject`` when one is set.
The accepted association's principal is ``ae:<AE title>`` with that entry's roles; the
DIMSE handlers check its permissions and study-level access per operation.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from openvna.archive.service import Archive
from openvna.config import AeAccess, Settings
from openvna.dimse import audit as dimse_audit
from openvna.dimse.peers import PeerRegistry
from openvna.security.principal import Principal, PrincipalKind, local_principal
from openvna.security.tls import peer_certificate_subject

logger = logging.getLogger(__name__)

_PRINCIPAL_ATTRIBUTE = "openvna_principal"
"""Where the accepted association keeps its principal (set at A-ASSOCIATE-RQ)."""

REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
CALLING_AE_NOT_RECOGNIZED = 0x03


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def _from_host(address: str, host: str) -> bool:
    """Whether ``address`` is ``host``: an IP address, a network (``10.1.0.0/16``) or a
    name resolved now (so a renumbered modality follows its DNS entry)."""
    try:
        candidate = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    try:
        return candidate in ipaddress.ip_network(host, strict=False)
    except ValueError:
        pass
    return address in _host_addresses(host)


def calling_ae_title(assoc: Any) -> str:
    primitive = assoc.requestor.primitive
    return str(primitive.calling_ae_title).strip() if primitive is not None else ""


class CallerRefused(Exception):
    """The association may not be accepted; ``reason`` is logged and audited."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def ae_principal(entry: AeAccess, address: str, certificate_subject: str | None) -> Principal:
    extra = {"certificate_subject": certificate_subject} if certificate_subject else {}
    return Principal(
        subject=f"ae:{entry.ae_title}",
        kind=PrincipalKind.AE,
        roles=frozenset(entry.roles),
        display_name=entry.ae_title,
        address=address,
        extra=extra,
    )


def resolve_principal(assoc: Any, settings: Settings, peers: PeerRegistry) -> Principal:
    """The principal of a requested association; raises :class:`CallerRefused`."""
    address = str(assoc.requestor.address)
    calling = calling_ae_title(assoc)
    if not settings.security.require_auth:
        if _is_loopback(address):
            return local_principal(address)
        peer = peers.get(calling)
        if peer is not None and address in _host_addresses(peer.host):
            return local_principal(address)
        raise CallerRefused(f"{calling} ({address}) is not a configured peer")
    entries = [entry for entry in settings.security.dicom_aes if entry.ae_title == calling]
    if not entries:
        raise CallerRefused(f"calling AE title {calling!r} is not in security.dicom_aes")
    certificate_subject: str | None = None
    reasons = []
    for entry in entries:
        if entry.hosts and not any(_from_host(address, host) for host in entry.hosts):
            reasons.append(f"{calling} may not connect from {address}")
            continue
        if entry.certificate_subject is not None:
            certificate_subject = peer_certificate_subject(assoc)
            if certificate_subject != entry.certificate_subject:
                reasons.append(
                    f"{calling} must present a TLS client certificate for "
                    f"{entry.certificate_subject!r}"
                )
                continue
        return ae_principal(entry, address, certificate_subject)
    raise CallerRefused("; ".join(reasons))


def make_access_check(archive: Archive, peers: PeerRegistry) -> Callable[[evt.Event], None]:
    """EVT_REQUESTED handler: accept known callers (recording their principal on the
    association), reject the others with A-ASSOCIATE-RJ rejected-permanent, "calling
    AE title not recognized" (PS3.8 9.3.4), before any presentation context is
    negotiated, and audit the refusal."""
    settings = archive.settings

    def check(event: evt.Event) -> None:
        assoc = event.assoc
        try:
            principal = resolve_principal(assoc, settings, peers)
        except CallerRefused as refused:
            logger.warning("association rejected: %s", refused.reason)
            dimse_audit.on_refused(event, archive, refused.reason)
            assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED)
            assoc.kill()
            return
        setattr(assoc, _PRINCIPAL_ATTRIBUTE, principal)

    return check


def association_principal(event: evt.Event, archive: Archive) -> Principal | None:
    """The principal recorded when the association was accepted.

    Without one (a handler bound without the access check) it is the local principal
    when authentication is off, as before, and None otherwise: the handlers then refuse
    every operation that needs a permission rather than guess.
    """
    principal = getattr(event.assoc, _PRINCIPAL_ATTRIBUTE, None)
    if isinstance(principal, Principal):
        return principal
    if not archive.settings.security.require_auth:
        return local_principal(str(event.assoc.requestor.address))
    return None
