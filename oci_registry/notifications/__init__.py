"""
Notifications: the registry's events, sent to HTTP endpoints (webhooks) in
CNCF Distribution's format or as CloudEvents, durably and at least once.
docs/notifications.md is the user's guide.

    config.py    the ``notifications`` section: endpoints, formats, filters
    notice.py    `Notice`, one event as the outbox stores it
    formats.py   the bodies (Distribution's envelope, CloudEvents) and the signature
    outbox.py    the outbox and the delivery lease, in the registry's storage
    sender.py    one endpoint's HTTP client
    delivery.py  one endpoint's delivery: order per repository, retries, dead letters
    notifier.py  the service: observes the registry, records events, runs the deliveries

Data flows one way: registry event -> `Notifier.observe` -> outbox (storage)
-> `EndpointDelivery` -> endpoint.
"""
