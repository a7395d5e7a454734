"""An HTTPS upstream for the rate-limit tests: each request is held open
(the head sent at once, the body after HOLD seconds), and the most requests
it ever had at once is written to the log file. The count drops before the
body's last chunk goes out, so a request counts here for no longer than the
broker holds it in flight. Prints its port, then serves until killed."""
import os, ssl, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

cert, key, log_path = sys.argv[1], sys.argv[2], sys.argv[3]
HOLD = float(os.environ.get("HOLD", "0.2"))
lock = threading.Lock()
now = 0
most = 0


class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        global now, most
        with lock:
            now += 1
            if now > most:
                most = now
                with open(log_path, "w") as f:
                    f.write(str(most))
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(HOLD)
            chunk = b"held\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        finally:
            with lock:
                now -= 1
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


server = Server(("127.0.0.1", 0), Slow)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
