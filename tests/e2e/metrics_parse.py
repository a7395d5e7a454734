"""Reads a /metrics page on stdin and prints its samples as JSON, as the
Prometheus project's own Python client parses them (a page it cannot parse
fails here). One object per sample: name, labels, value, and the family's
name and type."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({
            "family": family.name,
            "type": family.type,
            "name": s.name,
            "labels": s.labels,
            "value": s.value,
        })
print(json.dumps(samples))
