#!/usr/bin/env python3
"""A stand-in for a Kafka broker's authentication step, for testing clients'
SASL/SCRAM and TLS settings without a cluster: it speaks the Kafka protocol
far enough to authenticate (ApiVersions, SaslHandshake, SaslAuthenticate
with SCRAM-SHA-256/512, as RFC 5802 and KIP-84 describe), checks the
client's proof against the one user it knows, and closes the connection.

usage: sasl_broker.py USER PASSWORD [--tls CERT KEY]

Prints `listening HOST:PORT`, then one JSON line per authentication attempt:
{"user", "mechanism", "authenticated", "tls"}.
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import struct
import sys
import threading

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SUPPORTED = {API_VERSIONS: (0, 3), SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 0)}
MECHANISMS = {"SCRAM-SHA-512": hashlib.sha512, "SCRAM-SHA-256": hashlib.sha256}
SASL_AUTHENTICATION_FAILED = 58
ITERATIONS = 4096

out_lock = threading.Lock()


def emit(record):
    with out_lock:
        print(json.dumps(record), flush=True)


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def uvarint(data, pos):
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def put_uvarint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def string(s):
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def api_versions_body(version):
    if version >= 3:  # flexible: compact array, tagged fields
        body = struct.pack(">h", 0) + put_uvarint(len(SUPPORTED) + 1)
        for key, (lo, hi) in SUPPORTED.items():
            body += struct.pack(">hhh", key, lo, hi) + put_uvarint(0)
        return body + struct.pack(">i", 0) + put_uvarint(0)
    body = struct.pack(">hi", 0, len(SUPPORTED))
    for key, (lo, hi) in SUPPORTED.items():
        body += struct.pack(">hhh", key, lo, hi)
    return body + (struct.pack(">i", 0) if version >= 1 else b"")


class Scram:
    def __init__(self, mechanism, user, password):
        self.hash = MECHANISMS[mechanism]
        self.user = user
        self.password = password
        self.step = 0

    def hmac(self, key, msg):
        return hmac.new(key, msg, self.hash).digest()

    def respond(self, message):
        """Returns (reply, done, authenticated, claimed_user)."""
        text = message.decode()
        if self.step == 0:
            self.step = 1
            bare = text.split(",", 2)[2]  # after the gs2 header "n,,"
            attrs = dict(kv.split("=", 1) for kv in bare.split(","))
            self.claimed = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salt = os.urandom(16)
            self.server_first = "r=%s,s=%s,i=%d" % (
                self.nonce, base64.b64encode(self.salt).decode(), ITERATIONS)
            self.client_first_bare = bare
            return self.server_first.encode(), False, False, self.claimed
        without_proof, proof = text.rsplit(",p=", 1)
        salted = hashlib.pbkdf2_hmac(
            self.hash().name, self.password.encode(), self.salt, ITERATIONS)
        auth_message = ",".join(
            [self.client_first_bare, self.server_first, without_proof]).encode()
        client_key = self.hmac(salted, b"Client Key")
        signature = self.hmac(self.hash(client_key).digest(), auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        nonce_ok = ("r=" + self.nonce) in without_proof.split(",")
        ok = (self.claimed == self.user and nonce_ok
              and hmac.compare_digest(base64.b64decode(proof), expected))
        server_sig = self.hmac(self.hmac(salted, b"Server Key"), auth_message)
        return ("v=" + base64.b64encode(server_sig).decode()).encode(), True, ok, self.claimed


def serve(conn, user, password, tls):
    scram = None
    mechanism = None
    try:
        while True:
            size = struct.unpack(">i", read_exact(conn, 4))[0]
            req = read_exact(conn, size)
            key, version, corr = struct.unpack(">hhi", req[:8])
            pos = 8
            client_len = struct.unpack(">h", req[pos:pos + 2])[0]
            pos += 2 + max(client_len, 0)
            if key == API_VERSIONS and version >= 3:
                _, pos = uvarint(req, pos)  # request header tagged fields
            if key == API_VERSIONS:
                body = api_versions_body(version)
            elif key == SASL_HANDSHAKE:
                n = struct.unpack(">h", req[pos:pos + 2])[0]
                mechanism = req[pos + 2:pos + 2 + n].decode()
                err = 0 if mechanism in MECHANISMS else 33  # UNSUPPORTED_SASL_MECHANISM
                names = list(MECHANISMS)
                body = struct.pack(">hi", err, len(names)) + b"".join(string(m) for m in names)
                if err == 0:
                    scram = Scram(mechanism, user, password)
            elif key == SASL_AUTHENTICATE and scram is not None:
                n = struct.unpack(">i", req[pos:pos + 4])[0]
                reply, done, ok, claimed = scram.respond(req[pos + 4:pos + 4 + n])
                if done:
                    emit({"user": claimed, "mechanism": mechanism,
                          "authenticated": ok, "tls": tls})
                    if not ok:
                        msg = "Authentication failed during authentication due to invalid credentials with SASL mechanism " + mechanism
                        body = struct.pack(">h", SASL_AUTHENTICATION_FAILED) + string(msg) + struct.pack(">i", -1)
                        conn.sendall(struct.pack(">ii", len(body) + 4, corr) + body)
                        return
                body = struct.pack(">hh", 0, -1) + struct.pack(">i", len(reply)) + reply
                if done:
                    conn.sendall(struct.pack(">ii", len(body) + 4, corr) + body)
                    return  # authenticated: nothing more to offer
            else:
                return
            conn.sendall(struct.pack(">ii", len(body) + 4, corr) + body)
    except (EOFError, ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    if len(sys.argv) not in (3, 6):
        print(__doc__, file=sys.stderr)
        return 2
    user, password = sys.argv[1], sys.argv[2]
    context = None
    if len(sys.argv) == 6 and sys.argv[3] == "--tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
    server = socket.create_server(("127.0.0.1", 0))
    print("listening 127.0.0.1:%d" % server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        if context is not None:
            try:
                conn = context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                continue
        threading.Thread(target=serve, args=(conn, user, password, context is not None),
                         daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
