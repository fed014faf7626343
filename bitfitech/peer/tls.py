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

Certificate-authority trust is the one exception, for bootstrap addresses
given by host name: with ``--ca-bundle``, a dial to such a name runs
through :class:`NamedHostTLS`, and once the TLS handshake is done
:class:`CATrust` checks that the peer's chain leads to a CA of the bundle
and (with ``service_identity``) that the certificate names the host; if
not, the connection is aborted before a byte of the peer protocol flows.
A bootstrap host proves its name with ``--certificate``: a CA-issued chain
for its own node key (:func:`load_certificate_chain`), whose signing
request ``python -m bitfitech.peer.tls request`` prints
(:func:`certificate_request`).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import Any, cast

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from ..address import AddressError, PeerAddress, format_hostport, is_ip_literal, normalize_host
from ..identity import IdentityError, NodeIdentity, load_or_create_identity, node_id_from_public_key
from ..logs import logger

log = logger(__name__)

#: the largest PEM file read for ``--certificate`` or ``--ca-bundle``
MAX_PEM_FILE_SIZE = 4 * 1024 * 1024

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

    :ivar certificate: the node's certificate (the leaf of its chain).
    """

    def __init__(
        self, identity: NodeIdentity, now: float, chain: Sequence[x509.Certificate] = ()
    ) -> None:
        """
        :param identity: the node key the certificate is made for.
        :param now: the current POSIX time.
        :param chain: a CA-issued certificate for the node key followed by
            its intermediates (see :func:`load_certificate_chain`), presented
            instead of a self-signed certificate.
        """
        self.certificate = chain[0] if chain else node_certificate(identity, now)
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET)
        context.use_certificate(self.certificate)
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
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

    def for_named_host(self, host: str, trust: CATrust) -> NamedHostTLS:
        """The TLS settings of one dial to bootstrap host name C{host}, under C{trust}."""
        return NamedHostTLS(self, host, trust)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The TLS connection of one inbound link."""
        return self._connection(tlsProtocol)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The TLS connection of one outbound link."""
        return self._connection(tlsProtocol)


class CertificateRejected(Exception):
    """A named bootstrap host's certificate does not pass CA trust."""


class CATrust:
    """
    Certificate-authority trust for bootstrap host names (``--ca-bundle``):
    a peer's certificate chain must lead to one of the CAs, and its leaf
    must name the host dialled (``service_identity`` rules: DNS names in
    ``subjectAltName``).

    :ivar path: the bundle it was read from (for messages).
    :ivar authorities: the trusted CA certificates.
    """

    def __init__(self, authorities: Sequence[x509.Certificate], path: str = "") -> None:
        if not authorities:
            raise ValueError("no CA certificates")
        self.path = path
        self.authorities = tuple(authorities)
        self._store = crypto.X509Store()
        for authority in self.authorities:
            self._store.add_cert(crypto.X509.from_cryptography(authority))

    @classmethod
    def from_file(cls, path: str) -> CATrust:
        """
        The CAs of a PEM bundle.

        :raises TLSFileError: naming C{path}, when it cannot be read or
            holds no certificate.
        """
        return cls(_read_pem_certificates(path, "--ca-bundle"), path)

    def verify(self, connection: SSL.Connection, host: str) -> None:
        """
        Check the certificate chain the peer on C{connection} presented.

        :raises CertificateRejected: saying why it is not trusted for C{host}.
        """
        leaf = connection.get_peer_certificate()
        if leaf is None:
            raise CertificateRejected("no certificate")
        chain = connection.get_peer_cert_chain() or []
        try:
            crypto.X509StoreContext(self._store, leaf, chain=chain).verify_certificate()
        except crypto.X509StoreContextError as e:
            raise CertificateRejected(f"certificate not trusted by --ca-bundle: {e}") from None
        try:
            verify_certificate_hostname(leaf.to_cryptography(), host)
        except service_identity.VerificationError:
            raise CertificateRejected(f"certificate not issued for {host}") from None
        except service_identity.CertificateError as e:
            raise CertificateRejected(f"certificate names no host: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class NamedHostTLS:
    """
    The TLS settings of one dial to a bootstrap address given by host name
    under CA trust: the node's own (:class:`NodeTLS`), plus the host name
    sent in SNI and, once the handshake is done, :meth:`CATrust.verify`.
    A certificate that fails is logged and the connection aborted (the
    dial fails) before the peer protocol writes anything.
    """

    def __init__(self, node_tls: NodeTLS, host: str, trust: CATrust) -> None:
        self.node_tls = node_tls
        self.host = host.rstrip(".")
        self.trust = trust

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """The TLS connection of the dial, verified once its handshake is done."""
        connection = self.node_tls.clientConnectionForTLS(tlsProtocol)
        connection.set_tlsext_host_name(self.host.encode("ascii"))
        verified: list[bool] = []

        def on_info(connection: SSL.Connection, where: int, ret: int) -> None:
            if not where & SSL.SSL_CB_HANDSHAKE_DONE or verified:
                return
            verified.append(True)
            try:
                self.trust.verify(connection, self.host)
            except CertificateRejected as e:
                log.warn("Dropped the link to bootstrap host {host}: {reason}",
                         host=self.host, reason=str(e))  # fmt: skip
                tlsProtocol.failVerification(Failure(e))
            except Exception:
                # Raised inside OpenSSL's callback it would be lost.
                log.failure("Checking the certificate of {host} failed", host=self.host)
                tlsProtocol.failVerification(Failure())

        connection.set_info_callback(on_info)
        return connection


class TLSFileError(ValueError):
    """A ``--certificate`` or ``--ca-bundle`` file that cannot be used; names the file."""


def _read_pem_certificates(path: str, option: str) -> list[x509.Certificate]:
    """The certificates of a PEM file, in order; :class:`TLSFileError` names C{option}."""
    try:
        with open(path, "rb") as pem_file:
            data = pem_file.read(MAX_PEM_FILE_SIZE + 1)
    except OSError as e:
        raise TLSFileError(f"{option} {path}: {e.strerror or e}") from None
    if len(data) > MAX_PEM_FILE_SIZE:
        raise TLSFileError(f"{option} {path}: larger than {MAX_PEM_FILE_SIZE} bytes")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSFileError(f"{option} {path}: no PEM certificate in it") from None


def load_certificate_chain(path: str, identity: NodeIdentity) -> list[x509.Certificate]:
    """
    This node's CA-issued certificate chain (``--certificate``): PEM, the
    node's certificate first, then its intermediates.

    :raises TLSFileError: naming C{path}, when it cannot be read, holds no
        certificate, or its first certificate is not for the node key.
    """
    chain = _read_pem_certificates(path, "--certificate")
    proven = node_id_of_certificate(chain[0])
    if proven != identity.node_id:
        raise TLSFileError(
            f"--certificate {path}: its first certificate is for "
            f"{'node ' + proven if proven else 'a key that is not Ed25519'}, "
            f"not for this node's key (node {identity.node_id})"
        )
    return chain


def certificate_request(identity: NodeIdentity, host: str) -> x509.CertificateSigningRequest:
    """
    A certificate signing request for the node key of C{identity}, naming
    C{host} (``subjectAltName`` DNS name; subject CN the node id), for a CA
    to issue the node's ``--certificate``.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.node_id)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(node_private_key(identity), None)
    )


def main(argv: Sequence[str], out: Any = None) -> int:
    """
    ``python -m bitfitech.peer.tls request --data-dir DIR --host NAME``:
    print a PEM certificate signing request for the node key (made if the
    data directory has none yet).

    :return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bitfitech.peer.tls",
        description="Certificates for bitfi nodes that bootstrap hosts dial by name.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    request = commands.add_parser(
        "request", help="print a certificate signing request (PEM) for the node key"
    )
    request.add_argument("--data-dir", required=True, help="the node's data directory")
    request.add_argument("--host", required=True, help="the host name the CA is to certify")
    args = parser.parse_args(list(argv))
    try:
        host = normalize_host(args.host).rstrip(".")
    except AddressError as e:
        parser.error(f"--host: {e}")
    if is_ip_literal(host):
        parser.error("--host: a host name, not an IP address")
    try:
        identity = load_or_create_identity(args.data_dir)
    except IdentityError as e:
        parser.error(str(e))
    pem = certificate_request(identity, host).public_bytes(Encoding.PEM).decode("ascii")
    (out or sys.stdout).write(pem)
    return 0


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


class LinkSecurity:
    """
    How this node's peer links are secured: TLS bound to the node key (with
    CA trust for bootstrap hosts given by name), or plain TCP.

    Built with the node's settings, it opens nothing; :meth:`load` makes
    the certificate at start, once the node key is read, and
    :meth:`wrap` then puts each link factory inside TLS.

    :ivar tls: the node's TLS settings once loaded (``None`` on a plain node).
    :ivar ca_trust: the CA bundle once loaded, or ``None``.
    """

    def __init__(
        self,
        *,
        plain: bool,
        certificate: str | None = None,
        ca_bundle: str | None = None,
        bootstrap: Sequence[PeerAddress] = (),
        clock: Any = None,
    ) -> None:
        """
        :param plain: run links over plain TCP (``--insecure-plain-tcp``).
        :param certificate: a PEM chain for the node key (``--certificate``).
        :param ca_bundle: a PEM bundle of CAs (``--ca-bundle``) that bootstrap
            addresses given by host name must chain to.
        :param bootstrap: the bootstrap addresses.
        :param clock: the TLS layer's timers (the reactor).
        """
        self.plain = plain
        self.certificate = certificate
        self.ca_bundle = ca_bundle
        self.bootstrap = tuple(bootstrap)
        self.clock = clock
        self.tls: NodeTLS | None = None
        self.ca_trust: CATrust | None = None
        self._ca_named: frozenset[tuple[str, int]] = frozenset()

    def load(self, identity: NodeIdentity, now: float) -> None:
        """
        Make the node's TLS settings: its certificate (C{certificate}, else
        self-signed) and the CA trust of bootstrap host names; nothing on a
        plain node.

        :raises TLSFileError: naming a file that cannot be used.
        """
        if self.plain:
            self.tls = None
            log.warn(
                "Peer links run over plain TCP (--insecure-plain-tcp): they are neither "
                "encrypted nor authenticated, and this node links only with other plain nodes"
            )
            return
        chain: list[x509.Certificate] = []
        if self.certificate:
            chain = load_certificate_chain(self.certificate, identity)
        self.ca_trust = CATrust.from_file(self.ca_bundle) if self.ca_bundle else None
        self.tls = NodeTLS(identity, now, chain)
        if self.ca_trust is None:
            return
        named = [a.endpoint for a in self.bootstrap if not is_ip_literal(a.host)]
        self._ca_named = frozenset(named)
        if not named:
            log.warn("--ca-bundle applies to no bootstrap address: none is given by host name")
        else:
            log.info("Bootstrap hosts {hosts} must present a certificate from {path} naming them",
                     hosts=", ".join(format_hostport(*e) for e in named),
                     path=self.ca_bundle)  # fmt: skip

    def wrap(
        self, factory: IProtocolFactory, *, client: bool, address: PeerAddress | None = None
    ) -> IProtocolFactory:
        """
        C{factory} wrapped in this node's TLS, or as it is on a plain node.

        :param address: the address dialled; a bootstrap host name under
            ``--ca-bundle`` gets the CA-checking settings.
        """
        if self.tls is None:
            return factory
        if address is not None and self.ca_trust is not None and address.endpoint in self._ca_named:
            verifying = self.tls.for_named_host(address.host, self.ca_trust)
            return TLSLinkFactory(verifying, client, factory, clock=self.clock)
        return TLSLinkFactory(self.tls, client, factory, clock=self.clock)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
