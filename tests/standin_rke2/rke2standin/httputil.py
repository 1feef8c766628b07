"""Small HTTPS client/server helpers on top of the stdlib."""

import base64
import http.client
import http.server
import json
import socketserver
import ssl
import threading
import urllib.parse


class HTTPError(Exception):
    def __init__(self, status, body, url):
        self.status = status
        self.body = body
        self.url = url
        super().__init__("%s returned %d: %s" % (url, status, _summary(body)))


def _summary(body):
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("message"):
            return data["message"]
    except (ValueError, TypeError):
        pass
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return text.strip()[:300]


def client_context(cafile=None, certfile=None, keyfile=None, verify=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile=cafile)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def request(url, method="GET", body=None, ctx=None, headers=None, timeout=10.0, basic_auth=None):
    """Perform one request; return (status, bytes).  Raises OSError on connection problems."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if parsed.scheme == "https":
        conn = http.client.HTTPSConnection(parsed.hostname, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parsed.hostname, port, timeout=timeout)
    hdrs = {"Accept": "application/json", "User-Agent": "rke2/standin"}
    hdrs.update(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if basic_auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % basic_auth).encode()).decode()
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def json_request(url, method="GET", body=None, ok=(200, 201), **kwargs):
    status, data = request(url, method=method, body=body, **kwargs)
    if status not in ok:
        raise HTTPError(status, data, url)
    return json.loads(data) if data else None


class TLSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Threaded HTTPS server; the TLS handshake runs in the request thread, not in accept()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, ssl_context):
        self.ssl_context = ssl_context
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(60)
        tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request, client_address):
        # Clients that drop the connection or fail the handshake are not worth a traceback.
        pass


def serve(servers):
    threads = []
    for server in servers:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


class JSONHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rke2-standin"
    sys_version = ""

    def setup(self):
        try:
            self.request.do_handshake()
        except (TimeoutError, ssl.SSLError, OSError):
            self.close_connection = True
            self.rfile = self.wfile = None
            raise ConnectionAbortedError from None
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True

    def log_message(self, fmt, *args):  # silence default access log
        pass

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status, data, content_type="application/json", extra_headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, obj, extra_headers=None):
        self.send_bytes(status, json.dumps(obj).encode(), extra_headers=extra_headers)

    def peer_identity(self):
        """(common name, [organizations]) of a verified client certificate, or (None, [])."""
        try:
            cert = self.request.getpeercert()
        except (ValueError, AttributeError):
            cert = None
        if not cert:
            return None, []
        cn = None
        orgs = []
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
                elif key == "organizationName":
                    orgs.append(value)
        return cn, orgs

    def basic_auth(self):
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Basic "):
            return None, None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, None
        return user, password


def server_context(certfile, keyfile, client_cafile=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    if client_cafile:
        ctx.load_verify_locations(cafile=client_cafile)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
