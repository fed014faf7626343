"""Transport security of peer links: TLS bound to the node key.

Data path: socket -> TLS (:class:`TLSLinkFactory` wraps the link factory in
Twisted's memory-BIO TLS) -> :class:`~bitfitech.peer.protocol.PeerProtocol`.

Each node presents a self-signed X.509 certificate made at start, in
memory, for its own Ed25519 node key (subject CN = node id), and requires
one from its peer (the server asks for the client's).  The TLS layer
accepts any certificate: names and authorities mean nothing between peers.
What a certificate proves is its key, and so a node id:
:func:`proven_node_id` reads it off the transport, and the link drops a
peer whose ``version`` claims another id (see ``docs/protocol.rst``).
"""

from __future__ import annotations

import datetime
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from ..identity import NodeIdentity, node_id_from_public_key

#: how long a node certificate is valid (it is remade at every start; peers
#: do not check the dates, but OpenSSL wants some)
CERTIFICATE_LIFETIME = datetime.timedelta(days=3650)
#: how far back a certificate's validity starts (clock skew between peers)
CERTIFICATE_BACKDATE = datetime.timedelta(days=1)


def node_private_key(identity: NodeIdentity) -> Ed25519PrivateKey:
    """The node key of C{identity} as a ``cryptography`` Ed25519 private key."""
    return Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key))


def node_certificate(identity: NodeIdentity, now: float) -> x509.Certificate:
    """
    A self-signed certificate for the node key of C{identity}.

    :param now: the current POSIX time (the validity starts a day before).
    :return: a certificate whose subject and issuer CN are the node id and
        whose public key is the node's Ed25519 key.
    """
    key = node_private_key(identity)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.node_id)])
    start = datetime.datetime.fromtimestamp(now, datetime.UTC) - CERTIFICATE_BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(key, None)  # Ed25519 signs without a separate hash


def node_id_of_certificate(certificate: x509.Certificate | crypto.X509) -> str | None:
    """
    The node id a certificate proves: that of its Ed25519 public key.

    :return: the node id, or ``None`` when the key is not Ed25519.
    """
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    key = certificate.public_key()
    if not isinstance(key, Ed25519PublicKey):
        return None
    return node_id_from_public_key(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def proven_node_id(transport: object) -> str | None:
    """
    The node id the peer on C{transport} proved with its certificate.

    Available once the TLS handshake is done (when data flows).

    :return: the node id, or ``None`` for a plain transport, a peer that
        presented no certificate, or a certificate whose key is not Ed25519.
    """
    if not ISSLTransport.providedBy(transport):
        return None
    certificate = cast("x509.Certificate | crypto.X509 | None", transport.getPeerCertificate())
    if certificate is None:
        return None
    return node_id_of_certificate(certificate)


def negotiated_tls_version(transport: object) -> str | None:
    """The TLS version of C{transport} (``"TLSv1.3"``), or ``None`` if it is plain."""
    if isinstance(transport, TLSLink):
        return transport.tls_version
    return None


def _accept_any_certificate(
    connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """OpenSSL verify callback: any certificate passes; the link checks what it proves."""
    return True


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class NodeTLS:
    """
    The TLS settings of every peer link of a node, both directions: its
    certificate and key, TLS 1.2 at least (1.3 where both sides have it),
    and a certificate required from the peer.

    :ivar certificate: the node's certificate.
    """

    def __init__(self, identity: NodeIdentity, now: float) -> None:
        """
        :param identity: the node key the certificate is made for.
        :param now: the current POSIX time.
        """
        self.certificate = node_certificate(identity, now)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
        context.use_certificate(self.certificate)
        context.use_privatekey(node_private_key(identity))
        context.check_privatekey()
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                           _accept_any_certificate)  # fmt: skip
        # OpenSSL wants a session id context on a server that asks for certificates.
        context.set_session_id(b"bitfi")
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        self._context = context

    def _connection(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if isinstance(protocol, TLSLink):
            protocol.tls_connection = connection
        return connection

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The TLS connection of one inbound link."""
        return self._connection(tlsProtocol)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The TLS connection of one outbound link."""
        return self._connection(tlsProtocol)


@implementer(ISSLTransport)
class TLSLink(BufferingTLSTransport):
    """
    The TLS layer under one peer link: Twisted's TLS transport, which also
    says it is an :class:`ISSLTransport` and which TLS version it runs.

    :ivar tls_connection: its OpenSSL connection (``None`` once closed).
    """

    tls_connection: SSL.Connection | None = None

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or ``None`` while unknown."""
        if self.tls_connection is None:
            return None
        name = self.tls_connection.get_protocol_version_name()
        return None if name == "Unknown" else name

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.tls_connection = None


class TLSLinkFactory(TLSMemoryBIOFactory):
    """
    Wraps a peer-link factory in TLS; a connection the wrapped factory
    refuses (``buildProtocol`` returns ``None``) is refused, not wrapped.
    """

    protocol = TLSLink

    def buildProtocol(self, addr: IAddress | None) -> TLSLink | None:  # type: ignore[override]
        wrapped: Protocol | None = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return TLSLink(self, wrapped)
