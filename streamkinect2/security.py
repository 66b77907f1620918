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
from typing import Any, Callable, Iterable, Optional, Tuple, TypeVar, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.z85 import Z85CHARS

__all__ = ['CurveServerConfig', 'CurveClientConfig', 'make_keypair', 'load_public_key',
           'load_keypair', 'new_socket']

_Z85_KEY_LENGTH = 40
_Z85_CHARS = frozenset(Z85CHARS)
_KEY_SUFFIXES = ('.key', '.key_secret')
_T = TypeVar('_T')

#: A file name: str, bytes or ``os.PathLike``.
PathType = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]
#: A public key given as itself (40 Z85 characters, str or bytes) or as a ``.key`` file.
KeyOrFile = Union[str, bytes, os.PathLike[str], os.PathLike[bytes]]


def make_keypair(directory: Union[str, os.PathLike[str]], name: str) -> Tuple[str, str]:
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` in *directory*.

    Returns ``(public_file, secret_file)``. The secret file is readable by its owner only.
    """
    os.makedirs(directory, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_file, 0o600)
    return public_file, secret_file


def _z85_key(value: object) -> Optional[bytes]:
    """Return *value* as a Z85 CURVE key (bytes), or None if it is not one."""
    if isinstance(value, str):
        try:
            value = value.encode('ascii')
        except UnicodeEncodeError:
            return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return None
    key = bytes(value)
    if len(key) != _Z85_KEY_LENGTH or not _Z85_CHARS.issuperset(key):
        return None
    for start in range(0, _Z85_KEY_LENGTH, 5):  # each group of 5 encodes 32 bits
        group = 0
        for char in key[start:start + 5]:
            group = group * 85 + Z85CHARS.index(char)
        if group >= 1 << 32:
            return None
    return key


def _as_key(value: object, origin: str = 'a CURVE key') -> bytes:
    key = _z85_key(value)
    if key is None:
        length = len(value) if isinstance(value, (str, bytes, bytearray)) else '?'
        raise ValueError('{0} is not a CURVE key: a key is 40 Z85 characters, got {1} '
                         'of length {2}'.format(origin, _short(value), length))
    return key


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + '...'


def _path_text(value: object) -> Optional[str]:
    if isinstance(value, (str, bytes, os.PathLike)):
        return os.fsdecode(value)
    return None


def _is_path_like(value: object) -> bool:
    text = _path_text(value)
    return text is not None and (isinstance(value, os.PathLike) or os.sep in text
                                 or bool(os.altsep and os.altsep in text)
                                 or text.endswith(_KEY_SUFFIXES))


def _read_certificate(path: PathType) -> Tuple[bytes, Optional[bytes]]:
    """Return ``(public, secret or None)`` from the certificate file *path*, checked."""
    name = _path_text(path)
    if name is None:  # an int would be taken for a file descriptor
        raise TypeError('a key file is a path, got {0}'.format(_short(path)))
    if os.path.isdir(path):
        raise IsADirectoryError('a directory, not a key file: {0}'.format(name))
    if not os.path.exists(path):
        raise FileNotFoundError('no such key file: {0}'.format(name))
    try:
        public, secret = zmq.auth.load_certificate(name)
    except ValueError:  # no public-key line at all
        public, secret = None, None
    if not public:
        raise ValueError('no CURVE key in {0}: not a ZeroMQ certificate file (NAME.key or '
                         'NAME.key_secret, made by streamkinect2-keygen)'.format(name))
    public = _as_key(public, 'the public key in {0}'.format(name))
    if secret:
        secret = _as_key(secret, 'the secret key in {0}'.format(name))
    return public, secret


def load_public_key(key_or_file: KeyOrFile) -> bytes:
    """Return a Z85 public key given itself or a certificate file holding it.

    An existing file is read. A name ending in ``.key`` or ``.key_secret`` (or a
    ``PathLike``) that does not exist raises FileNotFoundError (``no such key file:
    PATH``); otherwise a 40-character Z85 key (str or bytes) is the key; anything else
    raises FileNotFoundError if it has a directory separator, else ValueError. A file
    that holds no valid key raises ValueError saying so.
    """
    text = _path_text(key_or_file)
    if text is not None and os.path.exists(key_or_file):
        return _read_certificate(key_or_file)[0]
    if isinstance(key_or_file, os.PathLike) or (text or '').endswith(_KEY_SUFFIXES):
        raise FileNotFoundError('no such key file: {0}'.format(text))
    key = _z85_key(key_or_file)
    if key is not None:
        return key
    if _is_path_like(key_or_file):
        raise FileNotFoundError('no such key file: {0}'.format(text))
    raise ValueError('{0} is neither a CURVE public key (40 Z85 characters) nor an '
                     'existing key file'.format(_short(key_or_file)))


def load_keypair(secret_file: PathType) -> Tuple[bytes, bytes]:
    """Return ``(public, secret)`` Z85 keys from a ``.key_secret`` certificate file.

    Raises FileNotFoundError (``no such key file: PATH``) if there is no such file,
    ValueError if it holds no valid key pair.
    """
    public, secret = _read_certificate(secret_file)
    if not secret:
        raise ValueError('{0} holds no secret key: give the secret certificate '
                         '(NAME.key_secret), not the public one'.format(
                             os.fsdecode(secret_file)))
    return public, secret


def _loading(what: str, load: Callable[..., _T], *args: Any) -> _T:
    """Call *load* and prefix any error's message with *what* (same exception type)."""
    try:
        return load(*args)
    except (OSError, ValueError, TypeError) as err:
        try:
            named = type(err)('{0}: {1}'.format(what, err))
        except TypeError:  # an exception type that wants other arguments
            raise err from None
        raise named from None


class CurveServerConfig(object):
    """A server's key pair and the client public keys it admits.

    *secret_file* is the server's ``.key_secret`` file; *allowed_clients* a list of
    client public keys or ``.key`` files. An empty list admits nobody.
    """

    def __init__(self, secret_file: PathType, allowed_clients: Iterable[KeyOrFile]) -> None:
        """Load the keys (raises ValueError or OSError naming the key and the file).

        E.g. ``FileNotFoundError("admitted client key 2 of 3: no such key file: b.key")``.
        """
        if isinstance(allowed_clients, (str, bytes, os.PathLike)):
            raise TypeError('allowed_clients is a list of public keys or .key files, got '
                            'the single {0} {1}'.format(type(allowed_clients).__name__,
                                                        _short(allowed_clients)))
        allowed_clients = list(allowed_clients)
        self.public_key, self.secret_key = _loading("server's secret key", load_keypair,
                                                    secret_file)
        self.allowed_clients = frozenset(
            _loading('admitted client key {0} of {1}'.format(n, len(allowed_clients)),
                     load_public_key, key)
            for n, key in enumerate(allowed_clients, 1))

    def callback(self, domain: str, client_key: Union[str, bytes]) -> bool:
        """ZAP credentials check: is *client_key* (Z85) admitted."""
        return _z85_key(client_key) in self.allowed_clients

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make *sock* a CURVE server socket."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_server = True


class CurveClientConfig(object):
    """A client's key pair and the public key of the server it trusts."""

    def __init__(self, secret_file: PathType, server_key: KeyOrFile) -> None:
        """Load the keys (*server_key*: the server's public key or ``.key`` file).

        Raises ValueError or OSError naming the key and the file, e.g.
        ``FileNotFoundError("server's public key: no such key file: server.key")``.
        """
        self.public_key, self.secret_key = _loading("client's secret key", load_keypair,
                                                    secret_file)
        self.server_key = _loading("server's public key", load_public_key, server_key)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make *sock* a CURVE client socket of the trusted server."""
        sock.curve_secretkey = self.secret_key
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = self.server_key


def new_socket(context: zmq.Context[Any], socket_type: int,
               curve: Optional[Union['CurveServerConfig', 'CurveClientConfig']] = None
               ) -> zmq.Socket[Any]:
    """Return a new socket with linger 0, made a CURVE socket by *curve* if given."""
    sock: zmq.Socket[Any] = context.socket(socket_type)
    sock.linger = 0
    if curve is not None:
        curve.apply(sock)
    return sock


class _Authenticator(object):
    """A ZAP authenticator thread for one context (ZeroMQ allows one per context)."""

    def __init__(self, context: zmq.Context[Any], config: CurveServerConfig) -> None:
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback('*', credentials_provider=config)

    def stop(self) -> None:
        self._auth.stop()
