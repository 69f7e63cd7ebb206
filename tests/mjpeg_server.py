"""A live HTTP MJPEG camera served from the test process on 127.0.0.1 (real sockets, real JPEG frames)."""

from __future__ import annotations

import http.server
import threading
import time

import cv2
import numpy as np


class MjpegServer:
    """multipart/x-mixed-replace JPEG frames over HTTP; ``down()`` cuts open streams and answers 503 until ``up()``."""

    def __init__(self, fps: float = 25.0):
        self.fps = fps
        self.available = threading.Event()
        self.available.set()
        self.connections = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not server.available.is_set():
                    self.send_error(503)
                    return
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                while server.available.is_set():
                    image = np.full((48, 64, 3), (index * 5) % 256, np.uint8)
                    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpeg) + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    index += 1
                    time.sleep(1.0 / server.fps)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        """Cut the open streams and refuse new ones (503) until :meth:`up`."""
        self.available.clear()

    def up(self) -> None:
        self.available.set()

    def close(self) -> None:
        self.available.clear()
        self.httpd.shutdown()
        self.httpd.server_close()
