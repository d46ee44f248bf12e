"""The ingestion benchmark's peer: the least a Flask app under gunicorn can do for a Segment request.

It parses the JSON body and answers 200 ``{"success": true}`` on POST /v1/batch and /v1/track - no
authentication lookup, no validation, no database. Run under the same gunicorn settings as
``espbridge serve``, its throughput and latency are the ceiling of this machine for this stack, and the
benchmark prints the service's figures as ratios against it.

    gunicorn --chdir bench --workers 2 --threads 4 peer_app:app
"""

from __future__ import annotations

import json

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.post("/v1/batch")
@app.post("/v1/track")
def accept() -> Response | tuple[Response, int]:
    try:
        json.loads(request.get_data())
    except ValueError:
        return jsonify(success=False), 400
    return jsonify(success=True)


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
