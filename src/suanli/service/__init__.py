"""The service: API, scheduling loop and executor in one process (``suanli up``)."""
