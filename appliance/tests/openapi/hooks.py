"""schemathesis hooks for edgebox's admin API (loaded through SCHEMATHESIS_HOOKS)."""
import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """Host-map imports are NDJSON text; send generated strings as they are."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


@schemathesis.hook
def map_case(ctx, case):
    """No generated config may carry a failover section: one that happened to
    name a real interface would put virtual addresses on this machine's own
    network and send VRRP there. Failover is tested in namespaces of its own
    (tests/failover.rs). Nor an acme section: the appliance would contact
    whatever CA URL was generated (tests/acme.rs uses pebble on loopback)."""
    if isinstance(case.body, dict):
        case.body.pop("failover", None)
        case.body.pop("acme", None)
    return case
