#!/usr/bin/env python3
"""The demo's stand-in for a notification service: accepts every POST (204) and counts them;
GET /count returns the count. Usage: demo-receiver.py PORT [ADDRESS] (default 127.0.0.1; the demo
gives the Kubernetes node's address, where pods reach host processes)"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

count = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            count += 1
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        body = str(count).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
ThreadingHTTPServer((address, int(sys.argv[1])), Handler).serve_forever()
