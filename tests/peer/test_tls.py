"""Tests for bitfitech.peer.tls: the node certificate and the node id it proves."""

from __future__ import annotations

import datetime
import io
import os
from contextlib import redirect_stderr
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bitfitech.address import PeerAddress
from bitfitech.config import LinkTiming
from bitfitech.identity import NodeIdentity, load_or_create_identity, node_id_from_public_key
from bitfitech.peer.protocol import LocalNode, PeerProtocol
from bitfitech.peer.tls import (
    CATrust,
    NodeTLS,
    TLSFileError,
    certificate_request,
    load_certificate_chain,
    main,
    negotiated_tls_version,
    node_certificate,
    node_id_of_certificate,
    node_private_key,
    proven_node_id,
)
from bitfitech.testing import (
    NO_WITNESSES,
    TEST_NETWORK,
    TEST_PAIR,
    CertificateAuthority,
    RecordingOwner,
    frame_of,
    version_of,
    write_pem,
)
from bitfitech.wire.messages import Verack

NOW = 1_700_000_000.0
ALICE = NodeIdentity.from_seed(b"\x01" * 32)
BOB = NodeIdentity.from_seed(b"\x02" * 32)


def ec_certificate() -> x509.Certificate:
    """A self-signed certificate for a P-256 key (not a node key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a node")])
    start = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip


def node_id_of_certificate_key(key: Any) -> str:
    """The node id of an Ed25519 public key."""
    return node_id_from_public_key(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


@implementer(ISSLTransport)
class CertifiedTransport(StringTransport):  # type: ignore[misc]
    """A StringTransport whose peer presented C{certificate}."""

    def __init__(self, certificate: x509.Certificate | None) -> None:
        super().__init__()
        self.certificate = certificate

    def getPeerCertificate(self) -> crypto.X509 | None:
        if self.certificate is None:
            return None
        return crypto.X509.from_cryptography(self.certificate)


class CertificateTests(SynchronousTestCase):
    def test_certificate_carries_the_node_key(self) -> None:
        certificate = node_certificate(ALICE, NOW)
        raw = certificate.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.assertEqual(raw, ALICE.public_key)
        [cn] = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, ALICE.node_id)
        self.assertEqual(certificate.issuer, certificate.subject)
        certificate.verify_directly_issued_by(certificate)  # self-signed by the node key
        self.assertLess(certificate.not_valid_before_utc.timestamp(), NOW)
        self.assertGreater(certificate.not_valid_after_utc.timestamp(), NOW + 365 * 86400)

    def test_certificate_proves_the_node_id(self) -> None:
        certificate = node_certificate(ALICE, NOW)
        self.assertEqual(node_id_of_certificate(certificate), ALICE.node_id)
        self.assertEqual(node_id_of_certificate(crypto.X509.from_cryptography(certificate)),
                         ALICE.node_id)  # fmt: skip
        self.assertNotEqual(node_id_of_certificate(node_certificate(BOB, NOW)), ALICE.node_id)

    def test_a_key_that_is_not_ed25519_proves_nothing(self) -> None:
        self.assertIsNone(node_id_of_certificate(ec_certificate()))
        self.assertIsNone(proven_node_id(CertifiedTransport(ec_certificate())))

    def test_proven_node_id_of_transports(self) -> None:
        self.assertIsNone(proven_node_id(StringTransport()))
        self.assertIsNone(proven_node_id(CertifiedTransport(None)))
        transport = CertifiedTransport(node_certificate(BOB, NOW))
        self.assertEqual(proven_node_id(transport), BOB.node_id)
        self.assertIsNone(negotiated_tls_version(transport))

    def test_tls_settings_hold_the_certificate(self) -> None:
        tls = NodeTLS(ALICE, NOW)
        self.assertEqual(node_id_of_certificate(tls.certificate), ALICE.node_id)


class BindingTests(SynchronousTestCase):
    """A link that requires proof checks the claimed node id against the certificate."""

    def link(
        self, transport: StringTransport, claimed: str, dialed: PeerAddress | None = None
    ) -> tuple[PeerProtocol, RecordingOwner]:
        owner = RecordingOwner()
        local = LocalNode(network=TEST_NETWORK, pair=TEST_PAIR, node_id=ALICE.node_id,
                          listen_port=3000, user_agent="bitfi-test/0",
                          witnesses=NO_WITNESSES, tls=True)  # fmt: skip
        protocol = PeerProtocol(local, owner, Clock(), "outbound" if dialed else "inbound",
                                dialed=dialed, timing=LinkTiming(), nonce=7)  # fmt: skip
        protocol.makeConnection(transport)
        protocol.dataReceived(frame_of(version_of(2, node_id=claimed)) + frame_of(Verack()))
        return protocol, owner

    def test_proven_claim_is_admitted(self) -> None:
        transport = CertifiedTransport(node_certificate(BOB, NOW))
        protocol, owner = self.link(transport, BOB.node_id)
        self.assertEqual(protocol.state, "ready")
        self.assertEqual(owner.ready, [protocol])
        self.assertEqual(owner.misbehaved, [])

    def test_claim_of_another_id_is_a_violation(self) -> None:
        transport = CertifiedTransport(node_certificate(BOB, NOW))
        protocol, owner = self.link(transport, "ab" * 20)
        self.assertEqual(protocol.state, "closed")
        self.assertEqual(owner.ready, [])
        [(_, reason)] = owner.misbehaved
        self.assertIn(BOB.node_id, reason)
        self.assertIsNone(protocol.node_id)
        self.assertTrue(transport.disconnecting)

    def test_no_certificate_is_a_violation(self) -> None:
        for transport in (StringTransport(), CertifiedTransport(None),
                          CertifiedTransport(ec_certificate())):  # fmt: skip
            protocol, owner = self.link(transport, BOB.node_id)
            self.assertEqual(protocol.state, "closed")
            self.assertEqual(len(owner.misbehaved), 1)
            self.assertIn("no Ed25519 certificate", owner.misbehaved[0][1])

    def test_pin_rests_on_the_proven_id(self) -> None:
        transport = CertifiedTransport(node_certificate(BOB, NOW))
        pinned = PeerAddress("127.0.0.1", 3001, "cd" * 20)
        protocol, owner = self.link(transport, BOB.node_id, dialed=pinned)
        self.assertEqual(protocol.state, "closed")
        self.assertIn("not the pinned", protocol.close_reason or "")
        self.assertEqual(owner.ready, [])
        protocol, owner = self.link(CertifiedTransport(node_certificate(BOB, NOW)), BOB.node_id,
                                    dialed=PeerAddress("127.0.0.1", 3001, BOB.node_id))  # fmt: skip
        self.assertEqual(protocol.state, "ready")


class CertificateFileTests(SynchronousTestCase):
    """``--certificate``, ``--ca-bundle`` and the signing request for a CA."""

    def test_request_names_the_host_and_carries_the_node_key(self) -> None:
        request = certificate_request(ALICE, "seed.example.org")
        self.assertTrue(request.is_signature_valid)
        self.assertEqual(node_id_of_certificate_key(request.public_key()), ALICE.node_id)
        [cn] = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, ALICE.node_id)
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["seed.example.org"])

    def test_request_command(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        out = io.StringIO()
        self.assertEqual(main(["request", "--data-dir", data_dir, "--host", "Seed.Example.org."],
                              out), 0)  # fmt: skip
        request = x509.load_pem_x509_csr(out.getvalue().encode("ascii"))
        identity = load_or_create_identity(data_dir)  # the key the command made
        self.assertEqual(node_id_of_certificate_key(request.public_key()), identity.node_id)
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["seed.example.org"])
        for host in ("127.0.0.1", "bad_host"):
            with redirect_stderr(io.StringIO()):
                self.assertRaises(SystemExit, main, ["request", "--data-dir", data_dir,
                                                     "--host", host], out)  # fmt: skip

    def test_chain_with_intermediates(self) -> None:
        root = CertificateAuthority()
        issuing = CertificateAuthority("issuing CA", root)
        leaf = issuing.issue(node_private_key(ALICE).public_key(), "localhost")
        path = write_pem(self.mktemp(), leaf, issuing.certificate)
        chain = load_certificate_chain(path, ALICE)
        self.assertEqual(chain, [leaf, issuing.certificate])
        tls = NodeTLS(ALICE, NOW, chain)
        self.assertEqual(tls.certificate, leaf)
        error = self.assertRaises(TLSFileError, load_certificate_chain, path, BOB)
        self.assertIn(f"--certificate {path}: its first certificate is for node {ALICE.node_id}",
                      str(error))  # fmt: skip
        missing = self.mktemp()
        error = self.assertRaises(TLSFileError, load_certificate_chain, missing, ALICE)
        self.assertIn(f"--certificate {missing}:", str(error))

    def test_ca_bundle(self) -> None:
        roots = [CertificateAuthority().certificate, CertificateAuthority("b").certificate]
        path = write_pem(self.mktemp(), *roots)
        self.assertEqual(CATrust.from_file(path).authorities, tuple(roots))
        self.assertRaises(ValueError, CATrust, [])
        with open(path, "wb") as pem_file:
            pem_file.write(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        self.assertRaises(TLSFileError, CATrust.from_file, path)

    def test_dial_settings_send_the_host_name(self) -> None:
        trust = CATrust([CertificateAuthority().certificate])
        creator = NodeTLS(ALICE, NOW).for_named_host("seed.example.org.", trust)
        self.assertEqual(creator.host, "seed.example.org")
        connection = creator.clientConnectionForTLS(object())
        self.assertEqual(connection.get_servername(), b"seed.example.org")
