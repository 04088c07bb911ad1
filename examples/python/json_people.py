#!/usr/bin/env python3
"""An idmesh connector in Python, without the Rust SDK: the protocol of
docs/connector-protocol.md in a few lines. It imports people from a JSON file (a list of
objects) and is read-only.

Settings: file (path of the JSON file), anchor (the key that identifies a person)."""
import hashlib
import json
import sys

settings = {}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def read_people():
    with open(settings["file"], "rb") as f:
        data = f.read()
    return json.loads(data), hashlib.sha256(data).hexdigest()


def send_people(people):
    send({"type": "total", "count": len(people)})
    for start in range(0, len(people), 1000):
        batch = people[start:start + 1000]
        send({"type": "objects", "objects": [
            {"anchor": str(p[settings["anchor"]]), "name": None, "object_type": "person",
             "attributes": p, "deleted": False} for p in batch]})


for line in sys.stdin:
    if not line.strip():
        continue
    request = json.loads(line)
    kind = request["type"]
    try:
        if kind == "hello":
            settings = request["settings"]
            send({"type": "hello", "protocol": 1, "name": "json-people",
                  "capabilities": ["full_import", "delta_import"]})
        elif kind == "full_import":
            people, digest = read_people()
            send_people(people)
            send({"type": "end", "watermark": {"sha256": digest}})
        elif kind == "delta_import":
            people, digest = read_people()
            if (request.get("watermark") or {}).get("sha256") == digest:
                send({"type": "end", "watermark": {"sha256": digest}, "note": "file unchanged"})
            else:
                send_people(people)
                send({"type": "end", "watermark": {"sha256": digest}, "forced_full": True})
        elif kind == "export":
            send({"type": "results", "results": [
                {"mesh_id": c["mesh_id"], "error": "this source is read-only", "object": None}
                for c in request["changes"]]})
        elif kind == "bye":
            break
        else:
            send({"type": "error", "message": "unknown request " + kind})
    except (OSError, ValueError, KeyError) as e:
        send({"type": "error", "message": str(e)})
