"""Helpers for the Flight SQL tests: start `tidepool serve`, build Flight SQL protobuf
messages by hand (so that the raw pyarrow.flight checks see exactly the bytes a JDBC or
ODBC driver would send), and parse the answers."""

import os
import re
import subprocess
import time

SQL_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_bytes(num, data):
    if isinstance(data, str):
        data = data.encode()
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def pb_varint(num, value):
    return _varint(num << 3) + _varint(value)


def pb_any(message_name, payload):
    """A google.protobuf.Any holding a Flight SQL message."""
    return pb_bytes(1, SQL_PREFIX + message_name) + pb_bytes(2, payload)


def pb_parse(buf):
    """The fields of a protobuf message: {field number: [values]} (ints or bytes)."""
    fields = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = bytes(buf[i : i + n]), i + n
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(num, []).append(value)
    return fields


def _read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def unpack_any(buf):
    fields = pb_parse(buf)
    return fields[1][0].decode(), fields[2][0]


class Server:
    """A running `tidepool serve`, its address and its log."""

    def __init__(self, binary, args, workdir, env=None, scheme="grpc"):
        os.makedirs(workdir, exist_ok=True)
        self.out_path = os.path.join(workdir, "serve.out")
        self.log_path = os.path.join(workdir, "serve.log")
        self.out = open(self.out_path, "w")
        self.err = open(self.log_path, "w")
        full_env = {k: v for k, v in os.environ.items() if k != "TIDEPOOL_ADMIN_PASSWORD"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", *args],
            stdout=self.out,
            stderr=self.err,
            env=full_env,
        )
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            with open(self.out_path) as f:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"tidepool serve exited: {self.log()}")
            time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise AssertionError(f"tidepool serve did not start: {self.log()}")
        self.uri = f"{scheme}://127.0.0.1:{self.port}"

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def wait_for_log(self, pattern, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log()}")

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.out.close()
        self.err.close()


def add_user(binary, users_file, name, role, password):
    done = subprocess.run(
        [binary, "user", "add", name, "--role", role, "--users", users_file],
        input=password + "\n",
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise AssertionError(f"tidepool user add failed: {done.stderr}")
