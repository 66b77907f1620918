"""Optional ZeroMQ CURVE security: encryption and client authentication.

Off by default (zero configuration on a trusted network). With it on, every control and
depth socket is encrypted and authenticated with CURVE (elliptic-curve keys, Z85
encoded): the client must know the server's public key, and the server admits only the
client public keys it was given. A client without an admitted key completes no
handshake, so it gets nothing: no ``me`` reply, no frames.

Keys are kept in ZeroMQ's certificate files (``NAME.key`` public, ``NAME.key_secret``
secret), made by :py:func:`make_keypair` or the ``streamkinect2-keygen`` tool.
"""
import os

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = ['CurveServerConfig', 'CurveClientConfig', 'make_keypair', 'load_public_key',
           'load_keypair', 'new_socket']

_Z85_KEY_LENGTH = 40


def make_keypair(directory, name):
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` in *directory*.

    Returns ``(public_file, secret_file)``. The secret file is readable by its owner only.
    """
    os.makedirs(directory, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_file, 0o600)
    return public_file, secret_file


def _as_key(value):
    key = value.encode('ascii') if isinstance(value, str) else bytes(value)
    if len(key) != _Z85_KEY_LENGTH:
        raise ValueError('a CURVE key is 40 Z85 characters, got {0}'.format(len(key)))
    return key


def load_public_key(key_or_file):
    """Return a Z85 public key given itself or a certificate file holding it."""
    if isinstance(key_or_file, (str, os.PathLike)) and os.path.exists(key_or_file):
        public, _ = zmq.auth.load_certificate(key_or_file)
        if public is None:
            raise ValueError('no public key in {0}'.format(key_or_file))
        return public
    return _as_key(key_or_file)


def load_keypair(secret_file):
    """Return ``(public, secret)`` Z85 keys from a ``.key_secret`` certificate file."""
    public, secret = zmq.auth.load_certificate(secret_file)
    if not public or not secret:
        raise ValueError('{0} is not a secret certificate (NAME.key_secret)'.format(
            secret_file))
    return public, secret


class CurveServerConfig(object):
    """A server's key pair and the client public keys it admits.

    *secret_file* is the server's ``.key_secret`` file; *allowed_clients* a list of
    client public keys or ``.key`` files. An empty list admits nobody.
    """

    def __init__(self, secret_file, allowed_clients):
        """Load the keys (raises ValueError or OSError with the file named)."""
        self.public_key, self.secret_key = load_keypair(secret_file)
        self.allowed_clients = frozenset(load_public_key(k) for k in allowed_clients)

    def callback(self, domain, client_key):
        """ZAP credentials check: is *client_key* (Z85) admitted."""
        return _as_key(client_key) in self.allowed_clients

    def apply(self, sock):
        """Make *sock* a CURVE server socket."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True


class CurveClientConfig(object):
    """A client's key pair and the public key of the server it trusts."""

    def __init__(self, secret_file, server_key):
        """Load the keys (*server_key*: the server's public key or ``.key`` file)."""
        self.public_key, self.secret_key = load_keypair(secret_file)
        self.server_key = load_public_key(server_key)

    def apply(self, sock):
        """Make *sock* a CURVE client socket of the trusted server."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = self.server_key


def new_socket(context, socket_type, curve=None):
    """Return a new socket with linger 0, made a CURVE socket by *curve* if given."""
    sock = context.socket(socket_type)
    sock.linger = 0
    if curve is not None:
        curve.apply(sock)
    return sock


class _Authenticator(object):
    """A ZAP authenticator thread for one context (ZeroMQ allows one per context)."""

    def __init__(self, context, config):
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback('*', credentials_provider=config)

    def stop(self):
        self._auth.stop()
