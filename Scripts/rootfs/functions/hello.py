"""A function with next to no initialization: greets whoever the event names."""


def handler(event):
    if event.get("raise"):
        raise ValueError(f"asked to fail: {event['raise']}")
    name = event.get("name", "world")
    return {"greeting": f"Hello, {name}!", "length": len(name)}
