#!/usr/bin/python3
"""The air between two Dire Wolf modems, for satcosign's link tests.

ALSA's `file` plugin pipes one modem's transmit audio (raw S16LE mono) into this program's
stdin; it forwards it in real time, as 10 ms UDP datagrams, to the other modem's `ADEVICE
UDP:<port>` input, filling the time between transmissions with silence so the receiver hears
a continuous stream. With SNR_DB set it adds white Gaussian noise at that signal-to-noise
ratio, which makes the modem lose frames as a weak radio link does. The signal is first
scaled by GAIN so that signal plus noise does not clip; SIGNAL_RMS is the modem's output level
(Dire Wolf's G3RUH 9600 output measures about 28400 RMS).

Environment: PORT (required), RATE (48000), SNR_DB, SIGNAL_RMS (28400), GAIN (0.25), SEED (1)."""
import os
import random
import socket
import struct
import sys
import threading
import time

rate = int(os.environ.get("RATE", "48000"))
port = int(os.environ["PORT"])
snr_db = os.environ.get("SNR_DB")
gain = float(os.environ.get("GAIN", "0.25"))
signal_rms = float(os.environ.get("SIGNAL_RMS", "28400")) * gain
rng = random.Random(int(os.environ.get("SEED", "1")))
sigma = signal_rms / (10 ** (float(snr_db) / 20)) if snr_db else 0.0

chunk = rate // 100  # 10 ms
pending = bytearray()
lock = threading.Lock()
closed = threading.Event()


def pump_stdin():
    fd = sys.stdin.buffer.fileno()
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            closed.set()
            return
        with lock:
            pending.extend(data)


threading.Thread(target=pump_stdin, daemon=True).start()
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
sent = 0
while not closed.is_set():
    with lock:
        take = bytes(pending[: chunk * 2])
        del pending[: chunk * 2]
    n = len(take) // 2
    samples = [int(s * gain) for s in struct.unpack("<%dh" % n, take[: n * 2])] + [0] * (chunk - n)
    if sigma:
        samples = [max(-32768, min(32767, int(s + rng.gauss(0.0, sigma)))) for s in samples]
    out.sendto(struct.pack("<%dh" % chunk, *samples), ("127.0.0.1", port))
    sent += chunk
    wait = start + sent / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
