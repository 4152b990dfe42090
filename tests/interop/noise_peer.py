#!/usr/bin/env python3
"""An independent libp2p-Noise peer for babble-net's secure channel.

Written from the protocol description only, on the `noiseprotocol` and
`coincurve` packages (PyPI): Noise_XX_25519_ChaChaPoly_SHA256, every
message as a 2-byte big-endian length and the Noise message, messages 2
and 3 carrying a NoiseHandshakePayload protobuf (encoded by hand here) with
the secp256k1 identity key and its DER ECDSA signature over
SHA-256("noise-libp2p-static-key:" || X25519 static key).

  call  --connect HOST:PORT --key HEX --expect PUBKEYHEX [--forge]
        dials a node, checks its key, sends one Sync with FromID 42 and
        prints the reply's FromID
  serve --listen HOST:PORT --key HEX
        prints "listening PORT", accepts one connection, answers one Sync
        with FromID = the request's FromID + 1, prints the caller's key

Each prints one line last: `OK ...`; `REFUSED after=N closed=eof|reset`
when the other side closed the connection (an end of stream, or a reset)
after this side sent handshake message N; `TIMEOUT ...` when nothing came in
time; `ERROR ...` for anything else (this script's own failures included).
"""

import argparse
import hashlib
import json
import os
import socket
import struct
import sys

import coincurve
from noise.connection import Keypair, NoiseConnection

PROTOCOL = b"Noise_XX_25519_ChaChaPoly_SHA256"
DOMAIN = b"noise-libp2p-static-key:"


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(tag, value):
    return bytes([tag << 3]) + varint(value)


def field_bytes(tag, data):
    return bytes([(tag << 3) | 2]) + varint(len(data)) + data


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
            fields[tag] = bytes(buf[i:i + length])
            i += length
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return fields


def read_varint(buf, i):
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def sha256(message):
    return hashlib.sha256(message).digest()


def our_payload(identity, static_public, forge):
    key = field_varint(1, 2) + field_bytes(2, identity.public_key.format(compressed=True))
    signer = coincurve.PrivateKey() if forge else identity
    signature = signer.sign(DOMAIN + static_public, hasher=sha256)
    return field_bytes(1, key) + field_bytes(2, signature)


def their_key(payload, remote_static):
    fields = parse_fields(payload)
    key = parse_fields(fields[1])
    if key.get(1) != 2:
        raise ValueError("not a secp256k1 identity")
    public = coincurve.PublicKey(key[2])
    if not public.verify(fields[2], DOMAIN + remote_static, hasher=sha256):
        raise ValueError("bad identity signature")
    return "0X" + public.format(compressed=False).hex().upper()


def send(sock, message):
    sock.sendall(struct.pack(">H", len(message)) + bytes(message))


def receive(sock):
    (length,) = struct.unpack(">H", exactly(sock, 2))
    return exactly(sock, length)


def exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def noise(initiator):
    connection = NoiseConnection.from_name(PROTOCOL)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    static = os.urandom(32)
    connection.set_keypair_from_private_bytes(Keypair.STATIC, static)
    connection.start_handshake()
    public = connection.noise_protocol.keypairs["s"].public_bytes
    return connection, public


def read_frames(sock, connection, count):
    """Decrypts messages until `count` JSON values (after an optional type
    byte) have arrived; returns the plaintext."""
    plain = b""
    while plain.count(b"\n") < count:
        plain += connection.decrypt(receive(sock))
    return plain


class Refused(Exception):
    """The other side closed the connection after handshake message
    `after` of this side's."""

    def __init__(self, after, closed):
        super().__init__("after=%d closed=%s" % (after, closed))


def refused_on_close(after, step):
    """`step()`, with an end of stream or a reset from the other side
    reported as its refusal after message `after`."""
    try:
        return step()
    except EOFError:
        raise Refused(after, "eof") from None
    except (ConnectionResetError, BrokenPipeError):
        raise Refused(after, "reset") from None


def call(args):
    identity = coincurve.PrivateKey(bytes.fromhex(args.key))
    host, port = args.connect.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    connection, static_public = noise(True)
    send(sock, connection.write_message())
    state = connection.noise_protocol.handshake_state
    message = refused_on_close(1, lambda: receive(sock))
    payload = connection.read_message(message)
    got = their_key(payload, state.rs.public_bytes)
    if got != args.expect.upper():
        raise ValueError("the node is %s, not %s" % (got, args.expect))
    message = connection.write_message(our_payload(identity, static_public, args.forge))
    request = b"\x01" + json.dumps({"FromID": 42, "Known": None, "SyncLimit": 1}).encode() + b"\n"
    encrypted = connection.encrypt(request)
    # From here on, the node that closes the connection refused message 3
    # (or, having taken it, the request).
    refused_on_close(3, lambda: (send(sock, message), send(sock, encrypted)))
    reply = refused_on_close(3, lambda: read_frames(sock, connection, 2)).split(b"\n")
    error, response = json.loads(reply[0]), json.loads(reply[1])
    if error:
        raise ValueError("remote error: %s" % error)
    print("OK FromID %d" % response["FromID"])


def serve(args):
    identity = coincurve.PrivateKey(bytes.fromhex(args.key))
    host, port = args.listen.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    listener.listen(1)
    print("listening %d" % listener.getsockname()[1], flush=True)
    sock, _ = listener.accept()
    sock.settimeout(10)
    connection, static_public = noise(False)
    connection.read_message(receive(sock))
    send(sock, connection.write_message(our_payload(identity, static_public, False)))
    state = connection.noise_protocol.handshake_state
    payload = connection.read_message(receive(sock))
    caller = their_key(payload, state.rs.public_bytes)
    plain = read_frames(sock, connection, 1)
    if plain[0] != 1:
        raise ValueError("not a Sync request")
    request = json.loads(plain[1:].split(b"\n")[0])
    response = {"FromID": request["FromID"] + 1, "Events": None, "Known": request["Known"]}
    send(sock, connection.encrypt(b'""\n' + json.dumps(response, separators=(",", ":")).encode() + b"\n"))
    print("OK caller %s" % caller)


def main():
    parser = argparse.ArgumentParser()
    roles = parser.add_subparsers(dest="role", required=True)
    dialler = roles.add_parser("call")
    dialler.add_argument("--connect", required=True)
    dialler.add_argument("--key", required=True)
    dialler.add_argument("--expect", required=True)
    dialler.add_argument("--forge", action="store_true")
    listener = roles.add_parser("serve")
    listener.add_argument("--listen", required=True)
    listener.add_argument("--key", required=True)
    args = parser.parse_args()
    try:
        call(args) if args.role == "call" else serve(args)
    except Refused as refused:  # the test reads the last line
        print("REFUSED %s" % refused)
        sys.exit(1)
    except TimeoutError as error:  # socket.timeout too
        print("TIMEOUT %s" % error)
        sys.exit(1)
    except Exception as error:
        print("ERROR %s: %s" % (type(error).__name__, error))
        sys.exit(1)


if __name__ == "__main__":
    main()
