"""What the Python benches share: a free loopback port, and the machine
line every bench prints beside its numbers."""
import os
import platform
import socket


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine():
    """`machine: <CPU model>, N CPUs, kernel R`."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"machine: {model}, {os.cpu_count()} CPUs, kernel {platform.release()}"
