"""The replicas behind a pool: membership and picking, relaying a request and its stream, and the
HTTP clients that talk to them."""
