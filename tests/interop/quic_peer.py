#!/usr/bin/env python3
"""An independent QUIC peer for babble-net's QUIC transport.

Written from the protocol description only, on the `aioquic`,
`cryptography` and `coincurve` packages (PyPI): QUIC v1 with TLS 1.3, ALPN
"babble/1", SNI "babble", mutual TLS with per-process self-signed P-256
certificates. Each certificate carries the critical X.509 extension
1.3.6.1.4.1.53594.1.1 = DER SEQUENCE { publicKey OCTET STRING, signature
OCTET STRING }: publicKey is the protobuf PublicKey {Type=2 (Secp256k1),
Data=33-byte compressed key} of the node's identity, signature its DER
ECDSA signature over SHA-256("libp2p-tls-handshake:" || certificate SPKI).
RPCs are Go Babble's: one bidirectional stream per call, carrying the type
byte, the request JSON and "\\n", then FIN; the reply is the error as a JSON
string, "\\n", the response JSON, "\\n", then FIN.

  call    --connect HOST:PORT --key HEX --expect PUBKEYHEX
          [--forge | --no-extension | --other-key HEX]
          dials a node, checks its key, sends one Sync with FromID 42 and
          prints the reply's FromID. --forge signs the extension over the
          wrong bytes, --no-extension leaves it out, --other-key makes it
          (validly) with another identity key
  streams --connect HOST:PORT --key HEX --expect PUBKEYHEX --count N
          makes N concurrent Syncs (FromID 0..N-1), one stream each, on one
          connection and prints how many were answered
  serve   --listen HOST:PORT --key HEX [--count N]
          prints "listening PORT", accepts one connection, answers N (1)
          Syncs with FromID = the request's FromID + 1, prints the caller's
          key, lingers 0.5 s so the replies are delivered

Each prints one line last: `OK ...`; `REFUSED transport code=0x.. reason=...`
or `REFUSED application code=0x.. reason=...` when the other side closed the
connection (a transport CONNECTION_CLOSE, as a TLS stack refusing a
certificate sends, or an application one), with its code and reason as
received; `TIMEOUT ...` when nothing came in time; `ERROR ...` for anything
else (this script's own failures included).
"""

import argparse
import asyncio
import datetime
import json
import ssl
import sys

import coincurve
from aioquic.asyncio import connect, serve as quic_serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived, StreamReset
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicProtocolVersion
from coincurve.ecdsa import cdata_to_der, der_to_cdata, signature_normalize
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = "babble/1"
SERVER_NAME = "babble"
EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
DOMAIN = b"libp2p-tls-handshake:"
SYNC = 1
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42  # the TLS alert, as a QUIC error
CALL_TIMEOUT, SERVE_TIMEOUT = 5, 20


# --- protobuf (PublicKey only) and DER, by hand so nothing is hidden -------

def read_varint(buf, i):
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def parse_fields(buf):
    """Protobuf fields of `buf`: tag -> int or bytes (last one wins)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        tag, wire = key >> 3, key & 7
        if wire == 0:
            fields[tag], i = read_varint(buf, i)
        elif wire == 2:
            length, i = read_varint(buf, i)
            if i + length > len(buf):
                raise ValueError("truncated protobuf field")
            fields[tag], i = bytes(buf[i:i + length]), i + length
        else:
            raise ValueError("unexpected protobuf wire type %d" % wire)
    return fields


def der(tag, content):
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def tlv(buf, i, tag=None):
    """The DER element at `i`, which must have `tag` if given: (content,
    index after it)."""
    if i + 2 > len(buf):
        raise ValueError("truncated DER")
    if tag is not None and buf[i] != tag:
        raise ValueError("DER tag 0x%02x where 0x%02x was expected" % (buf[i], tag))
    n, i = buf[i + 1], i + 2
    if n & 0x80:
        width = n & 0x7F
        if not 1 <= width <= 4 or i + width > len(buf):
            raise ValueError("bad DER length")
        n, i = int.from_bytes(buf[i:i + width], "big"), i + width
    if i + n > len(buf):
        raise ValueError("truncated DER")
    return buf[i:i + n], i + n


def spki_der(certificate):
    """The certificate's SubjectPublicKeyInfo exactly as encoded in it (not
    re-encoded, so a compressed or otherwise unusual point still matches)."""
    tbs, _ = tlv(certificate.tbs_certificate_bytes, 0, 0x30)
    i = tlv(tbs, 0)[1] if tbs[0] == 0xA0 else 0  # [0] version
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        i = tlv(tbs, i)[1]
    return bytes(tbs[i:tlv(tbs, i, 0x30)[1]])


# --- the certificate extension -----------------------------------------------

def pubkey_hex(public):
    return "0X" + public.format(compressed=False).hex().upper()


def make_certificate(identity, forge=False, extension=True):
    """A fresh self-signed P-256 certificate (and its key) vouched for by
    `identity`, the secp256k1 key, through the extension."""
    tls_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "babble")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(tls_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=365)))
    if extension:
        certificate = builder.sign(tls_key, hashes.SHA256())  # only to read its SPKI back
        signed = DOMAIN + spki_der(certificate)
        if forge:  # a real signature by the right key, over the wrong bytes
            signed = spki_der(certificate)
        # protobuf PublicKey: field 1 varint 2 (Secp256k1), field 2 33 bytes
        public = b"\x08\x02\x12\x21" + identity.public_key.format(compressed=True)
        signature = identity.sign(signed)  # coincurve: SHA-256, then DER ECDSA
        value = der(0x30, der(0x04, public) + der(0x04, signature))
        builder = builder.add_extension(x509.UnrecognizedExtension(EXTENSION, value), critical=True)
    return builder.sign(tls_key, hashes.SHA256()), tls_key


def identity_of(certificate):
    """The secp256k1 identity key the peer's certificate proves; ValueError
    if it proves none."""
    if certificate is None:
        raise ValueError("the peer sent no certificate")
    try:
        value = certificate.extensions.get_extension_for_oid(EXTENSION).value.value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no babble extension") from None
    body, end = tlv(value, 0, 0x30)
    public, i = tlv(body, 0, 0x04)
    signature, i = tlv(body, i, 0x04)
    if end != len(value) or i != len(body):
        raise ValueError("trailing bytes in the extension")
    key = parse_fields(public)
    if key.get(1) != 2 or not isinstance(key.get(2), bytes) or len(key[2]) != 33:
        raise ValueError("the extension's key is not a compressed secp256k1 key")
    identity = coincurve.PublicKey(key[2])  # ValueError if not on the curve
    # libsecp256k1 only accepts low-S signatures; other signers may not
    # normalise, and both S values are valid ECDSA, so normalise first.
    _, low_s = signature_normalize(der_to_cdata(bytes(signature)))
    if not identity.verify(cdata_to_der(low_s), DOMAIN + spki_der(certificate)):
        raise ValueError("the extension's signature does not verify")
    return identity


# --- QUIC ----------------------------------------------------------------------

class Refused(ConnectionError):
    """The other side closed the connection: its CONNECTION_CLOSE, as
    received."""

    def __init__(self, event):
        self.event = event
        kind = "application" if event.frame_type is None else "transport"
        super().__init__("%s code=0x%x reason=%s" % (kind, event.error_code, event.reason_phrase))


class Peer(QuicConnectionProtocol):
    """A connection whose peer is checked (`verified`, a future of its
    identity) as soon as the TLS handshake completes, and whose streams are
    ignored until then and forever if the check fails."""

    def __init__(self, quic, stream_handler=None):
        super().__init__(quic, stream_handler=stream_handler)
        self.identity = None
        self.verified = asyncio.get_running_loop().create_future()
        # aioquic's server sends a CertificateRequest only when its TLS
        # context's (private) _request_client_certificate is set, and
        # QuicConfiguration has no option for it; the context is built in
        # QuicConnection._initialize, so set the flag right after that.
        initialize = quic._initialize

        def initialize_and_request(peer_cid):
            initialize(peer_cid)
            quic.tls._request_client_certificate = not quic.configuration.is_client
        quic._initialize = initialize_and_request
        # Whether the connection ended by the other side's CONNECTION_CLOSE
        # (rather than this side's close, or an idle timeout): aioquic's
        # ConnectionTerminated event does not say, so note it as the frame
        # is handled (the handlers are a private table bound at __init__).
        self.closed_by_them = False
        handlers = quic._QuicConnection__frame_handlers
        for frame in (QuicFrameType.TRANSPORT_CLOSE, QuicFrameType.APPLICATION_CLOSE):
            handle, epochs = handlers[frame]

            def note_close(context, frame_type, buf, handle=handle):
                fresh = quic._close_event is None
                handle(context, frame_type, buf)
                if fresh and quic._close_event is not None:
                    self.closed_by_them = True
            handlers[frame] = (note_close, epochs)

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            try:
                self.identity = identity_of(self._quic.tls._peer_certificate)
                self.verified.set_result(self.identity)
            except Exception as error:  # whatever the reason, no proven identity
                self.refuse(error)
        elif isinstance(event, ConnectionTerminated):
            # say why to whoever waits, rather than a bare end of stream
            if self.closed_by_them:
                closed = Refused(event)
            else:
                closed = ConnectionError("connection closed here, error 0x%x %r"
                                         % (event.error_code, event.reason_phrase))
            for reader in self._stream_readers.values():
                reader.set_exception(closed)
            if not self.verified.done():
                self.verified.set_exception(closed)
        elif isinstance(event, StreamReset) and event.stream_id in self._stream_readers:
            self._stream_readers[event.stream_id].set_exception(
                ConnectionResetError("stream reset, error 0x%x" % event.error_code))
        if isinstance(event, StreamDataReceived) and self.identity is None:
            return  # never answer an unverified peer
        super().quic_event_received(event)

    def refuse(self, error):
        # A transport CONNECTION_CLOSE with CRYPTO_ERROR(bad_certificate),
        # as a TLS stack rejecting the certificate would send.
        self._quic.close(error_code=BAD_CERTIFICATE, frame_type=QuicFrameType.CRYPTO,
                         reason_phrase=str(error))
        self.transmit()
        if not self.verified.done():
            self.verified.set_exception(ValueError("refused the peer: %s" % error))


def configuration(is_client, identity, **options):
    certificate, tls_key = make_certificate(identity, **options)
    return QuicConfiguration(
        is_client=is_client, alpn_protocols=[ALPN], certificate=certificate, private_key=tls_key,
        # No CA vouches for a self-signed certificate: aioquic's own chain and
        # name checks are off and Peer checks the extension instead. (A
        # server's verify_mode is CERT_NONE by default.)
        verify_mode=ssl.CERT_NONE, server_name=SERVER_NAME if is_client else None,
        # QUIC v1 only: aioquic would also offer, and upgrade to, v2 (RFC 9369).
        supported_versions=[QuicProtocolVersion.VERSION_1])


async def sync(peer, from_id):
    reader, writer = await peer.create_stream()
    request = {"FromID": from_id, "Known": {}, "SyncLimit": 10}
    writer.write(bytes([SYNC]) + json.dumps(request).encode() + b"\n")
    writer.write_eof()
    reply = await reader.read()  # up to the node's FIN
    lines = reply.split(b"\n")
    if len(lines) != 3 or lines[2]:
        raise ConnectionError("no complete reply before the stream ended: %r" % reply)
    error = json.loads(lines[0])
    if error:
        raise ValueError("remote error: %s" % error)
    return json.loads(lines[1])["FromID"]


async def dial(args, count):
    identity = coincurve.PrivateKey(bytes.fromhex(args.key))
    forge, no_extension, other = (getattr(args, name, None) for name in ("forge", "no_extension", "other_key"))
    vouching = coincurve.PrivateKey(bytes.fromhex(other)) if other else identity
    config = configuration(True, vouching, forge=bool(forge), extension=not no_extension)
    host, port = args.connect.rsplit(":", 1)
    # wait_connected=False so a failed handshake surfaces as Peer.verified's
    # error (with the close reason) rather than a bare ConnectionError.
    async with connect(host.strip("[]"), int(port), configuration=config,
                       create_protocol=Peer, wait_connected=False) as peer:
        peer.transmit()
        node = pubkey_hex(await peer.verified)
        if node != args.expect.upper():
            peer.refuse("the node is %s, not %s" % (node, args.expect))
            raise ValueError("the node is %s, not %s" % (node, args.expect))
        if count is None:
            return "FromID %d" % await sync(peer, 42)
        replies = await asyncio.gather(*(sync(peer, i) for i in range(count)), return_exceptions=True)
        return "%d answered" % sum(not isinstance(reply, BaseException) for reply in replies)


async def within(seconds, awaitable):
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise TimeoutError("nothing within %d s" % seconds) from None


async def serve(args):
    loop = asyncio.get_running_loop()
    config = configuration(False, coincurve.PrivateKey(bytes.fromhex(args.key)))
    accepted, answered = loop.create_future(), loop.create_future()
    count = [0]

    async def answer(reader, writer):
        try:
            request = await reader.read()  # up to the caller's FIN
            if request[:1] != bytes([SYNC]) or not request.endswith(b"\n"):
                raise ValueError("not a Sync request frame: %r" % request)
            from_id = json.loads(request[1:])["FromID"]
            reply = {"FromID": from_id + 1, "SyncLimit": 0, "Events": None, "Known": None}
            writer.write(b'""\n' + json.dumps(reply).encode() + b"\n")
            writer.write_eof()
            count[0] += 1
            if count[0] == args.count and not answered.done():
                answered.set_result(None)
        except Exception as error:  # reported as the outcome, not lost in a task
            if not answered.done():
                answered.set_exception(error)

    def handle(reader, writer):  # only ever called once the caller is verified
        asyncio.ensure_future(answer(reader, writer))

    def create_protocol(quic, stream_handler=None):
        peer = Peer(quic, stream_handler=handle)
        if not accepted.done():  # the first connection is the one under test
            accepted.set_result(peer)
        return peer

    async def one_connection():
        peer = await accepted
        caller = await peer.verified
        # until every Sync is answered, or the caller hangs up first
        await asyncio.wait([answered, asyncio.ensure_future(peer.wait_closed())],
                           return_when=asyncio.FIRST_COMPLETED)
        if not answered.done():
            raise ConnectionError("the caller closed the connection after %d answers" % count[0])
        answered.result()
        return "caller %s" % pubkey_hex(caller)

    host, port = args.listen.rsplit(":", 1)
    server = await quic_serve(host.strip("[]"), int(port), configuration=config, create_protocol=create_protocol)
    print("listening %d" % server._transport.get_extra_info("sockname")[1], flush=True)
    try:
        return await within(SERVE_TIMEOUT, one_connection())
    finally:
        await asyncio.sleep(0.5)  # let the replies, or the refusal, reach the caller
        server.close()


def main():
    parser = argparse.ArgumentParser()
    roles = parser.add_subparsers(dest="role", required=True)
    dialler = roles.add_parser("call")
    many = roles.add_parser("streams")
    for sub in (dialler, many):
        sub.add_argument("--connect", required=True)
        sub.add_argument("--key", required=True)
        sub.add_argument("--expect", required=True)
    bad = dialler.add_mutually_exclusive_group()
    bad.add_argument("--forge", action="store_true")
    bad.add_argument("--no-extension", action="store_true")
    bad.add_argument("--other-key")
    many.add_argument("--count", type=int, required=True)
    listener = roles.add_parser("serve")
    listener.add_argument("--listen", required=True)
    listener.add_argument("--key", required=True)
    listener.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    roles = {"call": lambda: within(CALL_TIMEOUT, dial(args, None)),
             "streams": lambda: within(2 * CALL_TIMEOUT, dial(args, args.count)),
             "serve": lambda: serve(args)}
    try:
        print("OK %s" % asyncio.run(roles[args.role]()))
    except Refused as refused:  # the test reads the last line
        print("REFUSED %s" % refused)
        sys.exit(1)
    except TimeoutError as error:
        print("TIMEOUT %s" % error)
        sys.exit(1)
    except Exception as error:
        print("ERROR %s: %s" % (type(error).__name__, error))
        sys.exit(1)


if __name__ == "__main__":
    main()
