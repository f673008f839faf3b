"""Security layer every adapter passes (ARCHITECTURE.md property 8).

Authentication yields a :class:`~openvna.security.principal.Principal`; one
:class:`~openvna.security.authz.Authorizer` answers "may this principal do this to this
resource"; one :class:`~openvna.security.audit.AuditTrail` records it.
"""
