"""Interop with our Rust client, driven from broker/tests/native_client.rs.

Usage:
  interop.py SERVICE_URL consume TOPIC COUNT
      reads COUNT messages from the start of TOPIC and prints them as one JSON list
      (payload as text, key, properties, event time) on a line starting "RESULT ",
      acknowledging each.
  interop.py SERVICE_URL produce TOPIC COUNT CODEC
      sends COUNT messages batched and compressed with CODEC (none, lz4, zlib, zstd,
      snappy): payload "py-<i>", key "k<i % 7>", property i=<i>, event time 1000+i.
"""
import json
import sys

import pulsar

URL, MODE, TOPIC, COUNT = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
CODECS = {
    "none": pulsar.CompressionType.NONE,
    "lz4": pulsar.CompressionType.LZ4,
    "zlib": pulsar.CompressionType.ZLib,
    "zstd": pulsar.CompressionType.ZSTD,
    "snappy": pulsar.CompressionType.SNAPPY,
}

client = pulsar.Client(URL, operation_timeout_seconds=20)
if MODE == "consume":
    c = client.subscribe(
        TOPIC,
        "interop",
        initial_position=pulsar.InitialPosition.Earliest,
    )
    out = []
    for _ in range(COUNT):
        m = c.receive(timeout_millis=20000)
        out.append(
            {
                "payload": m.data().decode(),
                "key": m.partition_key() or None,
                "properties": m.properties(),
                "event_time": m.event_timestamp(),
            }
        )
        c.acknowledge(m)
    print("RESULT " + json.dumps(out), flush=True)
elif MODE == "produce":
    p = client.create_producer(
        TOPIC,
        batching_enabled=True,
        batching_max_messages=50,
        batching_max_publish_delay_ms=20,
        compression_type=CODECS[sys.argv[5]],
    )
    for i in range(COUNT):
        p.send_async(
            ("py-%d" % i).encode(),
            None,
            partition_key="k%d" % (i % 7),
            properties={"i": str(i)},
            event_timestamp=1000 + i,
        )
    p.flush()
    print("sent %d" % COUNT)
else:
    sys.exit("unknown mode " + MODE)
client.close()
