"""The compute market: offers, orders, matching, leases as capacity, a double-entry ledger.

``engine`` holds the matching rules as pure functions (the simulator runs them too);
``controller`` is the service's market controller; see docs/market.md.
"""
