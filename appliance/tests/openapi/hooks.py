"""schemathesis hooks for edgebox's admin API (loaded through SCHEMATHESIS_HOOKS)."""
import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """Host-map imports are NDJSON text; send generated strings as they are."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")
