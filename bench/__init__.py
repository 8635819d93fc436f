"""``make bench``: the ingestion client against a raw-httpx baseline (see ``bench.run``)."""
